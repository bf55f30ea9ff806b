//! Harness for a private ganesha (being built).
