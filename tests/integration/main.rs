//! Integration tests: real backends and services on loopback.

mod storage_conformance;
mod support;
