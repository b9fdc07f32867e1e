//! Mosaic's Rust initiator and DSM (to come; see the issue "Initiator and DSM simulator").
