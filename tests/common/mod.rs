//! Helpers shared by the Rust integration tests.
#![allow(dead_code)]

pub mod mortal;
pub mod servers;
