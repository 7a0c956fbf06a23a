//! Where a store is, as the operator names it: a directory, or
//! `s3://BUCKET/PREFIX` for S3 and the S3-compatible services.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A store's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// A directory on the controller's host.
    Local(PathBuf),
    /// A bucket, and the prefix (without slashes at either end, maybe
    /// empty) its objects' keys start with.
    S3 { bucket: String, prefix: String },
}

impl StoreUrl {
    /// The directory, for a local store.
    pub fn local(&self) -> Option<&std::path::Path> {
        match self {
            Self::Local(p) => Some(p),
            Self::S3 { .. } => None,
        }
    }
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = s.split_once("://") else {
            if s.is_empty() {
                return Err("the store is empty".into());
            }
            return Ok(Self::Local(PathBuf::from(s)));
        };
        match scheme {
            "s3" => {}
            "file" => return Ok(Self::Local(PathBuf::from(rest))),
            _ => {
                return Err(format!(
                    "{scheme}:// is not a store this controller knows: give a directory or s3://BUCKET/PREFIX"
                ));
            }
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's own rules for bucket names: the ones every provider accepts.
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(format!(
                "{s}: {bucket:?} is not a bucket name (3 to 63 lower-case letters, digits, dots and dashes)"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|seg| seg == "." || seg == ".." || (seg.is_empty() && !prefix.is_empty()))
        {
            return Err(format!(
                "{s}: the prefix must be plain names separated by single slashes"
            ));
        }
        Ok(Self::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_buckets_parse() {
        assert_eq!(
            "/var/hop3/backups".parse(),
            Ok(StoreUrl::Local("/var/hop3/backups".into()))
        );
        assert_eq!(
            "file:///srv/b".parse(),
            Ok(StoreUrl::Local("/srv/b".into()))
        );
        let s3: StoreUrl = "s3://my-backups/hop3/prod/".parse().unwrap();
        assert_eq!(
            s3,
            StoreUrl::S3 {
                bucket: "my-backups".into(),
                prefix: "hop3/prod".into()
            }
        );
        assert_eq!(s3.to_string(), "s3://my-backups/hop3/prod");
        assert_eq!(
            "s3://b12".parse::<StoreUrl>().unwrap().to_string(),
            "s3://b12"
        );
    }

    #[test]
    fn bad_urls_say_why() {
        let e = |s: &str| s.parse::<StoreUrl>().unwrap_err();
        assert!(
            e("gs://bucket").contains("s3://BUCKET/PREFIX"),
            "{}",
            e("gs://x")
        );
        assert!(e("s3://Bucket").contains("not a bucket name"));
        assert!(e("s3://").contains("not a bucket name"));
        assert!(e("s3://bucket/a/../b").contains("plain names"));
        assert!(e("s3://bucket/a//b").contains("plain names"));
        assert!(e("").contains("empty"));
    }
}
