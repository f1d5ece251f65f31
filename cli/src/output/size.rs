//! Sizes as people read them: binary units (`512 B`, `1.5 KiB`, `340 MiB`), one decimal
//! below ten so small differences still show.

/// `n` bytes in the largest binary unit that keeps the number at least 1 (the API crate's
/// formatting, so the CLI and the controller's messages agree).
pub fn bytes(n: i64) -> String {
    deployctl_api::data::human_bytes(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10 * 1024 - 10), "10 KiB");
        assert_eq!(bytes(340 * 1024 * 1024), "340 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
