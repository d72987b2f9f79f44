//! How one value is read from text and written back: the string enums, human
//! durations, lists that may come from one environment variable, and the
//! range checks and duration wording the error messages share. Every section
//! uses these; none of them knows a section.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Declares a string-valued enum whose parse error reads
/// `expected "a" or "b", got "c"`.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The spelling used in configuration files.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        "expected {}, got {other:?}",
                        $crate::config::values::one_of(&[$($text),+])
                    )),
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::config::values::from_text(d, str::parse)
            }
        }
    };
}
pub(super) use string_enum;

/// Reads a value written as text: the one way every typed setting is
/// deserialized, so that each states only how it parses and what its error
/// says (which names the key once the layering adds it).
pub(super) fn from_text<'de, D, T, E>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    E: std::fmt::Display,
{
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub(super) fn one_of(choices: &[&str]) -> String {
    let quoted: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// Serde adapter for durations written as human strings (`"30s"`, `"5m"`).
pub(super) mod human_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::from_text(d, |text| {
            humantime::parse_duration(text.trim())
                .map_err(|_| format!("expected a duration such as \"30s\" or \"5m\", got {text:?}"))
        })
    }
}

/// [`human_duration`] for optional keys.
pub(super) mod human_duration_option {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::human_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::human_duration::deserialize(d).map(Some)
    }
}

/// A TOML list, or (from the environment, where the config crate can only
/// split lists by also re-typing every other variable) a comma-separated
/// string; each item parsed.
pub(super) fn list_or_comma_separated<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    let items = match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    items
        .iter()
        .map(|item| item.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// A duration for an error message: under a day as humantime writes it
/// ("1s 500ms"), from a day on in days and the rest ("3651 days",
/// "3650 days 1s"), never in humantime's months and years (which are not
/// whole days: "9years 11months 28days 11h 24m").
pub fn in_days(duration: Duration) -> String {
    const DAY: u64 = 86_400;
    let days = duration.as_secs() / DAY;
    if days == 0 {
        return humantime::format_duration(duration).to_string();
    }
    let rest = duration - Duration::from_secs(days * DAY);
    let unit = if days == 1 { "day" } else { "days" };
    if rest.is_zero() {
        format!("{days} {unit}")
    } else {
        format!("{days} {unit} {}", humantime::format_duration(rest))
    }
}

pub(super) fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(key, "must be longer than 0s"));
    }
    Ok(())
}

pub(super) fn between_one_and(key: &str, value: u32, max: u32) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be at least 1, got 0"));
    }
    if value > max {
        return Err(ConfigError::invalid(
            key,
            format!("must be at most {max}, got {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn in_days_never_writes_months_or_years() {
        assert_eq!(in_days(Duration::ZERO), "0s");
        assert_eq!(in_days(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(in_days(Duration::from_secs(86_399)), "23h 59m 59s");
        assert_eq!(in_days(Duration::from_secs(86_400)), "1 day");
        assert_eq!(in_days(Duration::from_secs(3651 * 86_400)), "3651 days");
        assert_eq!(
            in_days(Duration::from_secs(3650 * 86_400 + 1)),
            "3650 days 1s"
        );
    }

    #[test]
    fn one_of_lists_choices() {
        assert_eq!(one_of(&["ms", "s"]), r#""ms" or "s""#);
        assert_eq!(one_of(&["a", "b", "c"]), r#""a", "b" or "c""#);
    }

    #[test]
    fn ranges_name_the_key_and_the_bound() {
        assert_eq!(
            between_one_and("k", 0, 5).unwrap_err().to_string(),
            "k: must be at least 1, got 0"
        );
        assert_eq!(
            between_one_and("k", 6, 5).unwrap_err().to_string(),
            "k: must be at most 5, got 6"
        );
        assert!(between_one_and("k", 5, 5).is_ok());
        assert_eq!(
            positive("k", Duration::ZERO).unwrap_err().to_string(),
            "k: must be longer than 0s"
        );
    }
}
