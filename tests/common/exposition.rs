//! A strict reader of the Prometheus text format (version 0.0.4), written from the format's
//! description rather than with the library that writes `/metrics`, so that a test can tell
//! that what the engine serves is valid, label escapes included.

#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

fn is_name(s: &str, colons: bool) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':');
    !s.is_empty() && !s.starts_with(|c: char| c.is_ascii_digit()) && s.chars().all(ok)
}

/// Every sample of `text`, or the first line that is not valid and why.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    // The family the last TYPE line named, and its type.
    let mut family: Option<(String, String)> = None;
    for (n, line) in text.split('\n').enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), Some(help)) => {
                    if !is_name(name, true) {
                        return Err(fail("a bad metric name"));
                    }
                    let mut chars = help.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                            return Err(fail("a bad escape in HELP"));
                        }
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_name(name, true) || !TYPES.contains(&kind) {
                        return Err(fail("a bad TYPE line"));
                    }
                    family = Some((name.to_owned(), kind.to_owned()));
                }
                (Some("HELP" | "TYPE"), _, _) => return Err(fail("an incomplete HELP or TYPE")),
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| fail("no value"))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(fail("a bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find("=\"").ok_or_else(|| fail("a label without =\""))?;
                let label = &r[..eq];
                if !is_name(label, false) || labels.iter().any(|(l, _)| l == label) {
                    return Err(fail("a bad or repeated label name"));
                }
                let mut value = String::new();
                let mut chars = r[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(fail("a bad escape in a label value")),
                        },
                        Some((i, '"')) => break eq + 2 + i + 1,
                        Some((_, c)) => value.push(c),
                        None => return Err(fail("an unterminated label value")),
                    }
                };
                labels.push((label.to_owned(), value));
                r = &r[end..];
                if let Some(after) = r.strip_prefix(',') {
                    r = after;
                } else if !r.starts_with('}') {
                    return Err(fail("labels not separated by ,"));
                }
            }
            rest = r;
        }
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no space before the value"))?
            .split(' ');
        let value = match fields.next().unwrap_or_default() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| fail("a bad value"))?,
        };
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(fail("a bad timestamp"));
        }
        if fields.next().is_some() {
            return Err(fail("text after the timestamp"));
        }
        if let Some((fam, kind)) = &family {
            let suffix = name.strip_prefix(fam.as_str());
            let belongs = match kind.as_str() {
                "histogram" => matches!(suffix, Some("_bucket" | "_sum" | "_count")),
                _ => suffix == Some(""),
            };
            if !belongs {
                return Err(fail(&format!("a sample outside its family {fam}")));
            }
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}
