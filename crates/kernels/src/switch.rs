//! Environment switches that force a kernel's fallback path, to compare with it or to test a
//! machine without the instructions (leaf module).

/// Whether the environment variable `name` switches a kernel off: `off`, `0` or `false`.
pub(crate) fn switched_off(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.trim(), "off" | "0" | "false"))
        .unwrap_or(false)
}
