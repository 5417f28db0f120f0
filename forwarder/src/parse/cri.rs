//! The CRI log format (containerd, CRI-O):
//!
//! ```text
//! <RFC3339Nano time> SP <stream> SP <tags> SP <message>
//! 2016-10-06T00:17:09.669794202Z stdout F a full line
//! 2016-10-06T00:17:09.669794202Z stdout P the first 16 KiB of a long line...
//! ```
//!
//! `tags` is `:`-separated; its first tag is `P` (partial: the message continues in the next
//! line of the same stream) or `F` (full, or the last piece). The runtime splits lines longer
//! than 16 KiB into `P` pieces. The message may be empty, and then the space after the tag may
//! be missing too.

use super::{parse_rfc3339, Line, ParseError, Stream};

/// Parses one CRI line (without its `\n`).
pub fn parse(line: &[u8]) -> Result<Line<'_>, ParseError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let sp1 = memchr(b' ', line).ok_or(ParseError::MissingField("stream"))?;
    let time = parse_rfc3339(&line[..sp1]).ok_or(ParseError::BadTime)?;
    let rest = &line[sp1 + 1..];
    let sp2 = memchr(b' ', rest).ok_or(ParseError::MissingField("tag"))?;
    let stream = Stream::from_bytes(&rest[..sp2]).ok_or(ParseError::BadStream)?;
    let rest = &rest[sp2 + 1..];
    let (tags, message) = match memchr(b' ', rest) {
        Some(sp3) => (&rest[..sp3], &rest[sp3 + 1..]),
        None => (rest, &b""[..]),
    };
    let first_tag = tags.split(|&b| b == b':').next().unwrap_or(b"");
    let partial = match first_tag {
        b"P" => true,
        b"F" => false,
        _ => return Err(ParseError::BadTag),
    };
    Ok(Line {
        time,
        stream,
        partial,
        message: message.into(),
    })
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use logferry_common::forward::EventTime;

    #[test]
    fn full_and_partial_lines() {
        let l = parse(b"2016-10-06T00:17:09.669794202Z stdout F hello world").unwrap();
        assert_eq!(l.time, EventTime::new(1_475_713_029, 669_794_202));
        assert_eq!(l.stream, Stream::Stdout);
        assert!(!l.partial);
        assert_eq!(&*l.message, b"hello world");
        let l = parse(b"2016-10-06T00:17:09.669794202+02:00 stderr P  two spaces").unwrap();
        assert_eq!(l.time, EventTime::new(1_475_713_029 - 7200, 669_794_202));
        assert_eq!(l.stream, Stream::Stderr);
        assert!(l.partial);
        assert_eq!(&*l.message, b" two spaces");
        let l = parse(b"2016-10-06T00:17:09Z stdout F").unwrap();
        assert_eq!(&*l.message, b"");
        let l = parse(b"2016-10-06T00:17:09Z stdout F:x \r").unwrap();
        assert!(!l.partial);
        assert_eq!(&*l.message, b"");
    }

    #[test]
    fn invalid_lines_are_errors() {
        for bad in [
            &b""[..],
            b"garbage",
            b"2016-10-06T00:17:09Z",
            b"2016-10-06T00:17:09Z stdout",
            b"2016-10-06T00:17:09Z stdin F x",
            b"2016-10-06T00:17:09Z stdout X x",
            b"yesterday stdout F x",
            b"{\"log\":\"x\\n\"}",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
