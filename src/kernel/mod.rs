//! Kernels: the project's cached build and resolving what a run boots.

pub mod build;
pub mod cache;
pub mod config;
mod error;
pub mod image;
pub mod resolve;
pub mod source;
pub mod tree;

pub use build::{build, BuildOptions, BuildOutcome};
pub use error::KernelError;
pub use image::ImageFormat;
pub use resolve::{resolve, KernelRequest, ResolvedKernel};
