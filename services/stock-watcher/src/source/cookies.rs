//! The Netscape cookie file (`cookies.txt`), as browser exporters and curl
//! write it: one cookie a line, seven fields separated by tabs —
//! domain, include-subdomains (`TRUE`/`FALSE`), path, secure (`TRUE`/`FALSE`),
//! expiry (Unix seconds, `0` for a session cookie), name, value. Lines
//! starting with `#` are comments, except `#HttpOnly_` before a domain,
//! which marks an HTTP-only cookie. Blank lines are skipped. A value may be
//! empty (some exporters then drop the last tab).
//!
//! The watcher sends, as one `Cookie` header, the cookies whose domain
//! matches the source's host and that have not expired.

use std::path::Path;

/// One cookie of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    /// Without a leading dot.
    pub domain: String,
    pub include_subdomains: bool,
    pub path: String,
    pub secure: bool,
    /// Unix seconds; 0 for a session cookie.
    pub expires: u64,
    pub name: String,
    pub value: String,
}

/// Why the cookie file could not be used; names the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum CookieFileError {
    #[error("--target-cookie-file {path}: cannot read it: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "--target-cookie-file {path}, line {line}: {why} (expected the Netscape cookie format: 7 tab-separated fields)"
    )]
    Line {
        path: String,
        line: usize,
        why: String,
    },
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<Vec<Cookie>, CookieFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CookieFileError::Read {
        path: name.clone(),
        source,
    })?;
    parse(&text, &name)
}

/// Parses the text of a cookie file (`path` only names it in errors).
pub fn parse(text: &str, path: &str) -> Result<Vec<Cookie>, CookieFileError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let line = match line.strip_prefix("#HttpOnly_") {
            Some(rest) => rest,
            None if line.trim().is_empty() || line.starts_with('#') => continue,
            None => line,
        };
        let bad = |why: String| CookieFileError::Line {
            path: path.to_owned(),
            line: i + 1,
            why,
        };
        let fields: Vec<&str> = line.split('\t').collect();
        if !(6..=7).contains(&fields.len()) {
            return Err(bad(format!("{} field(s)", fields.len())));
        }
        let flag = |v: &str, what: &str| match v.to_ascii_uppercase().as_str() {
            "TRUE" => Ok(true),
            "FALSE" => Ok(false),
            _ => Err(bad(format!("{what} is {v:?}, not TRUE or FALSE"))),
        };
        let domain = fields[0]
            .trim()
            .trim_start_matches('.')
            .to_ascii_lowercase();
        if domain.is_empty() {
            return Err(bad("the domain is empty".into()));
        }
        let include_subdomains = flag(fields[1], "the include-subdomains field")?;
        let secure = flag(fields[3], "the secure field")?;
        let expires = fields[4]
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|e| e.is_finite() && *e >= 0.0)
            .ok_or_else(|| bad(format!("the expiry {:?} is not Unix seconds", fields[4])))?
            as u64;
        let name = fields[5].trim();
        if name.is_empty() {
            return Err(bad("the cookie name is empty".into()));
        }
        out.push(Cookie {
            domain,
            include_subdomains,
            path: fields[2].to_owned(),
            secure,
            expires,
            name: name.to_owned(),
            value: fields.get(6).copied().unwrap_or("").to_owned(),
        });
    }
    Ok(out)
}

/// The `Cookie` header value for requests to `host` at `now_unix` (seconds):
/// every unexpired cookie whose domain matches; `None` when none does.
pub fn header_for(cookies: &[Cookie], host: &str, now_unix: u64) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let pairs: Vec<String> = cookies
        .iter()
        .filter(|c| c.expires == 0 || c.expires > now_unix)
        .filter(|c| {
            host == c.domain || (c.include_subdomains && host.ends_with(&format!(".{}", c.domain)))
        })
        .map(|c| format!("{}={}", c.name, c.value))
        .collect();
    (!pairs.is_empty()).then(|| pairs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Netscape HTTP Cookie File\n\
# https://curl.se/docs/http-cookies.html\n\
\n\
.target.com\tTRUE\t/\tFALSE\t1900000000\tvisitorId\t019F10125B580200B6A99C7E39A2FA39\n\
#HttpOnly_.target.com\tTRUE\t/\tTRUE\t0\tTealeafAkaSid\tabc\n\
redsky.target.com\tFALSE\t/\tTRUE\t1000\told\tgone\n\
.example.com\tTRUE\t/\tFALSE\t0\tother\tx\n\
www.target.com\tFALSE\t/\tFALSE\t0\tempty\n";

    #[test]
    fn reads_what_exporters_write_and_picks_by_host() {
        let c = parse(FILE, "c.txt").unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(c[1].name, "TealeafAkaSid");
        assert_eq!(c[4].value, "");
        assert_eq!(
            header_for(&c, "redsky.target.com", 1_800_000_000).as_deref(),
            Some("visitorId=019F10125B580200B6A99C7E39A2FA39; TealeafAkaSid=abc"),
            "subdomain cookies match, expired ones do not"
        );
        assert_eq!(
            header_for(&c, "redsky.target.com", 500).as_deref(),
            Some("visitorId=019F10125B580200B6A99C7E39A2FA39; TealeafAkaSid=abc; old=gone")
        );
        assert_eq!(header_for(&c, "127.0.0.1", 0), None);
    }

    #[test]
    fn a_bad_line_names_the_file_and_the_line() {
        let e = parse("# c\n.target.com TRUE / FALSE 0 a b\n", "/tmp/c.txt").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("--target-cookie-file /tmp/c.txt, line 2"),
            "{text}"
        );
        let e = parse(".t.com\tyes\t/\tFALSE\t0\ta\tb\n", "c.txt").unwrap_err();
        assert!(e.to_string().contains("line 1") && e.to_string().contains("yes"));
        let e = parse(".t.com\tTRUE\t/\tFALSE\tsoon\ta\tb\n", "c.txt").unwrap_err();
        assert!(e.to_string().contains("expiry"));
    }
}
