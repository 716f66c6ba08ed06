//! wire: placeholder
