//! Query parameters, read by hand so that every mistake gets a 400 naming the parameter, and
//! a name the route does not take (a typo) is refused instead of silently ignored.

use super::ApiError;

pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// The pairs of a query string, checked against the names the route takes.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = form_pairs(query.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("the query string: {e}")))?;
        for (name, _) in &pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {name:?} (this route takes: {})",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
        }
        Ok(Params(pairs))
    }

    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A whole number in `range`.
    pub fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        match text.trim().parse::<i64>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "{name}={text:?}: expected a whole number in {}..={}",
                range.start(),
                range.end()
            ))),
        }
    }

    /// `true`/`false` (also 1/0, yes/no); absent: `default`.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ApiError::bad_request(format!(
                "{name}={text:?}: expected true or false"
            ))),
        }
    }
}

/// `%XX` escapes (and, with `plus_is_space`, `+`) unescaped; the bytes must be UTF-8.
pub(crate) fn unescape(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-escape in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once unescaped"))
}

/// `application/x-www-form-urlencoded` pairs: `+` is a space, `%XX` a byte.
fn form_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((unescape(k, true)?, unescape(v, true)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_unescaped_and_unknown_names_refused() {
        let p = Params::parse(Some("search=a+dog%21&limit=5"), &["search", "limit"]).unwrap();
        assert_eq!(p.get("search"), Some("a dog!"));
        assert_eq!(p.number("limit", 1..=10).unwrap(), Some(5));
        assert!(p.number("limit", 6..=10).is_err());
        assert!(Params::parse(Some("beamsize=3"), &["beam_size"]).is_err());
        assert!(Params::parse(Some("search=%zz"), &["search"]).is_err());
        let f = Params::parse(Some("store=true&attention=no"), &["store", "attention"]).unwrap();
        assert!(f.flag("store", false).unwrap());
        assert!(!f.flag("attention", true).unwrap());
        assert!(f.flag("missing", true).unwrap());
    }
}
