//! Mosaic's partitioned routing table (see issue "Routing"): pure logic, no I/O.
