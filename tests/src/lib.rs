//! Test harness for moor's end-to-end tests and benchmarks: builds a ToR and a
//! node out of network namespaces, runs the real `ipamd`, `moor` and
//! `ipamctl` binaries against them, and removes everything it made.
