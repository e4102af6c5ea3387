//! Reading manifest files.
