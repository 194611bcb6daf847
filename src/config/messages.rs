//! Parse errors in an operator's words: the TOML parser names Rust's types ("expected
//! usize", "expected u16"); a config file's reader needs the form ("a whole number",
//! "a whole number from 0 to 65535").

/// `message` with Rust's integer type names replaced by the form they accept.
pub(crate) fn plain_types(message: &str) -> String {
    const FORMS: &[(&str, &str)] = &[
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        (
            "expected u16",
            "expected a whole number from 0 to 65535 (ports: 1 to 65535)",
        ),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut out = message.to_owned();
    for (rust, plain) in FORMS {
        // Whole words only: "expected u16" must not rewrite "expected u160".
        let mut from = 0;
        while let Some(i) = out[from..].find(rust) {
            let at = from + i;
            let end = at + rust.len();
            let boundary = out[end..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric());
            if boundary {
                out.replace_range(at..end, plain);
                from = at + plain.len();
            } else {
                from = end;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_types_become_forms() {
        assert_eq!(
            plain_types("invalid type: string \"x\", expected usize"),
            "invalid type: string \"x\", expected a whole number (0 or more)"
        );
        assert_eq!(
            plain_types("invalid value: integer `70000`, expected u16"),
            "invalid value: integer `70000`, expected a whole number from 0 to 65535 (ports: 1 to 65535)"
        );
        assert_eq!(plain_types("expected u160"), "expected u160");
        assert_eq!(plain_types("unknown field `x`"), "unknown field `x`");
    }
}
