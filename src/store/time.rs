//! Redis replies described and decoded where more than one caller needs
//! them: a reply's shape for messages (never its content, which may hold
//! tokens), and `TIME`, the clock every cutoff and expiry is judged by.

use redis::Value;

/// What a reply is, without its content (which may hold tokens): for
/// error messages.
pub fn shape(reply: &Value) -> String {
    match reply {
        Value::Nil => "nil".to_owned(),
        Value::Int(_) => "an integer".to_owned(),
        Value::BulkString(bytes) => format!("a string of {} bytes", bytes.len()),
        Value::Array(items) => format!("an array of {} elements", items.len()),
        Value::SimpleString(_) | Value::Okay => "a status".to_owned(),
        Value::Double(_) => "a double".to_owned(),
        Value::ServerError(e) => format!("an error ({})", e.code()),
        _ => "a reply of another type".to_owned(),
    }
}

/// `TIME`'s reply, strictly: two decimal strings, seconds since the epoch
/// and microseconds below a million. Anything else says what it was.
///
/// # Errors
/// What the reply was instead.
pub fn parse_time(reply: &Value) -> Result<i128, String> {
    let decimal = |part: &Value| -> Option<u64> {
        match part {
            Value::BulkString(text) => std::str::from_utf8(text).ok().and_then(digits),
            Value::SimpleString(text) => digits(text),
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    };
    let Value::Array(parts) = reply else {
        return Err(shape(reply));
    };
    let [secs, micros] = parts.as_slice() else {
        return Err(shape(reply));
    };
    match (decimal(secs), decimal(micros)) {
        (Some(secs), Some(micros)) if micros < 1_000_000 => {
            Ok(i128::from(secs) * 1_000_000 + i128::from(micros))
        }
        (Some(_), Some(micros)) => Err(format!("{micros} microseconds, not below a million")),
        _ => Err(format!(
            "{} and {}, not two non-negative integers",
            shape(secs),
            shape(micros)
        )),
    }
}

/// A non-negative decimal integer, digits only (no sign, no spaces).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn time_replies_are_decoded_strictly() {
        let time = |parts: Vec<Value>| parse_time(&Value::Array(parts));
        assert_eq!(
            time(vec![bulk("1700000000"), bulk("123456")]),
            Ok(1_700_000_000_123_456)
        );
        assert_eq!(time(vec![Value::Int(5), Value::Int(7)]), Ok(5_000_007));
        for bad in [
            vec![bulk("1700000000")],
            vec![bulk("1700000000"), bulk("1"), bulk("2")],
            vec![bulk("-5"), bulk("0")],
            vec![bulk("+5"), bulk("0")],
            vec![bulk(" 5"), bulk("0")],
            vec![bulk("1.5"), bulk("0")],
            vec![bulk(""), bulk("0")],
            vec![bulk("1700000000"), bulk("1000000")],
            vec![bulk("99999999999999999999"), bulk("0")],
            vec![Value::Nil, bulk("0")],
            vec![Value::Int(-1), bulk("0")],
        ] {
            assert!(time(bad.clone()).is_err(), "{bad:?}");
        }
        for bad in [Value::Nil, bulk("1700000000"), Value::Okay, Value::Int(1)] {
            assert!(parse_time(&bad).is_err(), "{bad:?}");
        }
    }
}
