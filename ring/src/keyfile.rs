//! The cluster key file, read alike by appliances and agents: owner-only
//! permissions, and at least 32 random bytes written as hex.

/// Hex digits a key needs at least (32 bytes).
pub const MIN_HEX_DIGITS: usize = 64;
/// How to make a good key (said in every refusal).
pub const HOW: &str = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > KEYFILE; chmod 600 KEYFILE";

/// The secret in `path`, or why it is refused.
pub fn read(path: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("{path} has mode {mode:04o}: other users could read the cluster key (chmod 600)"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    check(text.trim()).map_err(|why| format!("{path}: {why}; make one with: {HOW}"))?;
    Ok(text.trim().to_owned())
}

/// Refuses secrets shorter than 32 bytes of hex, and ones that are plainly
/// not random (few distinct digits: a placeholder, a repeated pattern).
pub fn check(secret: &str) -> Result<(), String> {
    if !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the key is not hex digits".into());
    }
    if secret.len() < MIN_HEX_DIGITS {
        return Err(format!(
            "the key has {} hex digits; at least {MIN_HEX_DIGITS} (32 random bytes) are needed",
            secret.len()
        ));
    }
    let mut seen = [false; 16];
    for b in secret.bytes() {
        seen[(b as char).to_digit(16).unwrap_or(0) as usize] = true;
    }
    if seen.iter().filter(|s| **s).count() < 10 {
        return Err("the key does not look random (too few distinct digits): the example key?".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_placeholder_and_non_hex_keys_are_refused() {
        assert!(check("change-me-shared-cluster-secret").is_err());
        assert!(check(&"ab".repeat(40)).is_err(), "too few distinct digits");
        assert!(check(&"0123456789abcdef".repeat(3)).is_err(), "48 digits is short");
        assert!(check(&"0123456789abcdef".repeat(4)).is_ok());
        assert!(check(&"0123456789ABCDEF".repeat(4)).is_ok());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("ringlb-keyfile-{}", std::process::id()));
        std::fs::write(&p, "3c1f0e9a7b6d5c4e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e\n").unwrap();
        let path = p.to_str().unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(path).unwrap_err().contains("mode 0644"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(path).unwrap().len(), 64);
        let _ = std::fs::remove_file(&p);
    }
}
