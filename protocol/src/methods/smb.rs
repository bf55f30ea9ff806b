//! `smb.*` params and results (filled in with the smb family).
