//! Object metadata helpers: timestamps, uids, generated names and the
//! name/label syntax rules the real API server enforces.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 UTC with seconds, as Kubernetes writes `metav1.Time`.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; `None` if malformed.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse::<i64>().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// `kubectl`'s human duration (`5s`, `3m2s`, `4h`, `12d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 192 {
        return if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    let d = h / 24;
    if d < 730 {
        return format!("{d}d");
    }
    if d < 2920 {
        return if d % 365 == 0 {
            format!("{}y", d / 365)
        } else {
            format!("{}y{}d", d / 365, d % 365)
        };
    }
    format!("{}y", d / 365)
}

/// A random RFC 4122 version-4 UUID.
pub fn new_uid() -> String {
    let mut v: u128 = rand::random();
    v = (v & !(0xf << 76)) | (0x4 << 76);
    v = (v & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `generateName` suffix: five characters from the alphabet the real server uses.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let i = rand::random_range(0..ALPHABET.len());
            char::from(ALPHABET[i])
        })
        .collect()
}

/// Which syntax a resource's names must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most resources).
    Subdomain,
    /// RFC 1123 label (namespaces, services).
    Label,
    /// Anything usable as a path segment (RBAC objects).
    PathSegment,
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain check (≤ 253 characters).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Checks a name against a rule; `Err(reason)` is the real server's message.
pub fn check_name(rule: NameRule, name: &str) -> Result<(), String> {
    match rule {
        NameRule::Label if name.len() > 63 => Err("must be no more than 63 characters".into()),
        NameRule::Label if !is_dns_label(name) => Err(LABEL_MSG.into()),
        NameRule::Subdomain if name.len() > 253 => {
            Err("must be no more than 253 characters".into())
        }
        NameRule::Subdomain if !is_dns_subdomain(name) => Err(SUBDOMAIN_MSG.into()),
        NameRule::PathSegment if name == "." || name == ".." => Err(format!("may not be '{name}'")),
        NameRule::PathSegment if name.contains('/') || name.contains('%') => {
            Err("may not contain '/' or '%'".into())
        }
        _ if name.is_empty() => Err("name or generateName is required".into()),
        _ => Ok(()),
    }
}

fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// Qualified name (`prefix/name` or `name`) as used for label and annotation keys.
pub fn is_qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !is_dns_subdomain(p))
    {
        return false;
    }
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Validates `metadata.labels` and annotation keys; returns `(field, value, why)`.
pub fn check_labels(meta: &Value) -> Result<(), (String, String, String)> {
    if let Some(labels) = meta.get("labels") {
        let Some(map) = labels.as_object() else {
            return Err((
                "metadata.labels".into(),
                labels.to_string(),
                "must be a map of strings".into(),
            ));
        };
        for (k, v) in map {
            if !is_qualified_name(k) {
                return Err((
                    "metadata.labels".into(),
                    k.clone(),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into(),
                ));
            }
            let Some(v) = v.as_str() else {
                return Err((
                    format!("metadata.labels.{k}"),
                    v.to_string(),
                    "must be a string".into(),
                ));
            };
            if !is_label_value(v) {
                return Err((
                    "metadata.labels".into(),
                    v.to_string(),
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into(),
                ));
            }
        }
    }
    if let Some(ann) = meta.get("annotations") {
        let Some(map) = ann.as_object() else {
            return Err((
                "metadata.annotations".into(),
                ann.to_string(),
                "must be a map of strings".into(),
            ));
        };
        for (k, v) in map {
            if !is_qualified_name(k) {
                return Err((
                    "metadata.annotations".into(),
                    k.clone(),
                    "name part must consist of alphanumeric characters, '-', '_' or '.'".into(),
                ));
            }
            if !v.is_string() {
                return Err((
                    format!("metadata.annotations.{k}"),
                    v.to_string(),
                    "must be a string".into(),
                ));
            }
        }
    }
    Ok(())
}

/// `metadata.<field>` as a string.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// The object's resourceVersion as a number (0 if absent or not ours).
pub fn object_rv(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for t in [0, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2000-02-29T01:00:00+01:00"),
            Some(951_782_400)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.123456Z"),
            Some(951_782_400)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2000-13-29T00:00:00Z"), None);
    }

    #[test]
    fn uids_are_v4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, new_uid());
    }

    #[test]
    fn names() {
        assert!(check_name(NameRule::Subdomain, "a.b-c").is_ok());
        assert!(check_name(NameRule::Subdomain, "A").is_err());
        assert!(check_name(NameRule::Subdomain, "-a").is_err());
        assert!(check_name(NameRule::Label, "a.b").is_err());
        assert!(check_name(NameRule::Label, &"a".repeat(64)).is_err());
        assert!(check_name(NameRule::PathSegment, "system:node").is_ok());
        assert!(check_name(NameRule::PathSegment, "a/b").is_err());
        assert!(check_name(NameRule::PathSegment, "").is_err());
    }

    #[test]
    fn labels() {
        let ok = serde_json::json!({"labels": {"app.kubernetes.io/name": "x", "a": ""}});
        assert!(check_labels(&ok).is_ok());
        for bad in [
            serde_json::json!({"labels": {"a": "-x"}}),
            serde_json::json!({"labels": {"/a": "x"}}),
            serde_json::json!({"labels": {"a": 1}}),
            serde_json::json!({"annotations": {"a b": "x"}}),
        ] {
            assert!(check_labels(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86_400 * 3), "3d");
        assert_eq!(human_duration(86_400 * 30), "30d");
    }
}
