//! schedrig: a test harness for Linux process schedulers.
