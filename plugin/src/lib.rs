//! Ballista DLP: Deep Learning Pipelines as a plugin for Apache DataFusion Ballista.
//!
//! Every process (the `dlp` client, `dlp-scheduler`, `dlp-executor`, the tests) builds its
//! sessions through [`session`], which installs the same codecs ([`codec`]), functions and
//! table factories everywhere.

pub mod access;
pub mod batches;
pub mod codec;
pub mod config;
pub mod credentials;
pub mod embedded;
pub mod error;
pub mod finetune;
pub mod image;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod ml;
pub mod net;
pub mod pipeline;
pub mod session;
pub mod sql;
pub mod storage;
pub mod torch;

pub use session::ImageContextExt;
