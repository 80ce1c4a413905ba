//! Which images the harness runs: settings, so that where no registry is reachable a locally
//! built image (scripts/lib/images) stands in for the official one.

/// The official Apache Kafka image, at the version scripts/lib/infra.sh pins (a test checks).
pub const DEFAULT_KAFKA: &str = "apache/kafka:4.4.0";
/// The official PostgreSQL image, at the major Debian's package (scripts' cluster) has.
pub const DEFAULT_POSTGRES: &str = "postgres:15";

/// `ORDERSTREAM_KAFKA_IMAGE` and `ORDERSTREAM_POSTGRES_IMAGE`, or the official images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub kafka: String,
    pub postgres: String,
}

impl Images {
    pub fn from_env() -> Self {
        let setting = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            kafka: setting("ORDERSTREAM_KAFKA_IMAGE", DEFAULT_KAFKA),
            postgres: setting("ORDERSTREAM_POSTGRES_IMAGE", DEFAULT_POSTGRES),
        }
    }
}

/// `name[:tag]` split into name and tag (`latest` when there is none); a registry's port
/// (`host:5000/name`) is not a tag.
pub fn name_and_tag(image: &str) -> (&str, &str) {
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => (
            &image[..last_slash + colon],
            &image[last_slash + colon + 1..],
        ),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names_and_tags() {
        assert_eq!(
            name_and_tag("apache/kafka:4.4.0"),
            ("apache/kafka", "4.4.0")
        );
        assert_eq!(name_and_tag("postgres"), ("postgres", "latest"));
        assert_eq!(
            name_and_tag("localhost:5000/orderstream-kafka"),
            ("localhost:5000/orderstream-kafka", "latest")
        );
        assert_eq!(
            name_and_tag("localhost/orderstream-postgres:15"),
            ("localhost/orderstream-postgres", "15")
        );
    }

    #[test]
    fn the_default_kafka_image_is_the_version_the_scripts_pin() {
        let infra = include_str!("../../../scripts/lib/infra.sh");
        let pinned = infra
            .lines()
            .find_map(|line| line.strip_prefix("KAFKA_VERSION=\""))
            .and_then(|rest| rest.split('"').next())
            .expect("KAFKA_VERSION in scripts/lib/infra.sh");
        assert_eq!(name_and_tag(DEFAULT_KAFKA).1, pinned);
    }
}
