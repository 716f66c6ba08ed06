//! A scheduler author's crate would hold its scheduler here; this
//! example tests the kernel tree's own schedulers, which schedrig builds.
