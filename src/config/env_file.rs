//! `env_files` as written: `KEY=VALUE` lines (pure parsing; the files are read by the host).

use std::path::Path;

use super::ConfigError;

/// Parses an env file: `KEY=VALUE` lines, `#` comments, blank lines, optional `export `,
/// values optionally in matching single or double quotes (taken literally).
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let err = |message: String| ConfigError {
            file: path.to_path_buf(),
            line: Some(i + 1),
            key: String::new(),
            message,
        };
        let Some((k, v)) = line.split_once('=') else {
            return Err(err("expected KEY=VALUE".into()));
        };
        let k = k.trim();
        if k.is_empty()
            || k.starts_with(|c: char| c.is_ascii_digit())
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err(format!("{k:?} is not a valid variable name")));
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_like_docker_and_name_bad_lines() {
        let p = Path::new("/etc/shim/secrets/a.env");
        let v = parse_env_file(p, "# c\n\nA=1\nexport B='two words'\nC=\"x=y\"\nD=\n").unwrap();
        assert_eq!(
            v,
            [("A", "1"), ("B", "two words"), ("C", "x=y"), ("D", "")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let e = parse_env_file(p, "A=1\nnonsense\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/shim/secrets/a.env:2: expected KEY=VALUE"
        );
        assert!(parse_env_file(p, "1A=x").is_err());
    }
}
