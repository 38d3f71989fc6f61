//! Test helpers: a real wrapper backend that injects faults.
