//! Integration tests: real backends and services on loopback.

mod archive;
mod push;
mod storage_conformance;
mod support;
