//! `mosaic-dsm`: benchmark and simulator front end.

fn main() {}
