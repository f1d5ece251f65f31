//! Health gates: pure analysis bookkeeping (`analysis`) and the measurements themselves
//! (`measure`: readiness, HTTP, error rate, Prometheus, Job).

pub mod analysis;
pub mod measure;
pub mod policy;
