//! An Apache Kafka container: the same single KRaft node as scripts/lib/kafka-node.
//!
//! The broker is started by a command of ours rather than the image's entrypoint, so that the
//! official image and one built here from Maven Central's jars (scripts/lib/images) run the
//! same way: both have `sh`, `java` on the path and Kafka's jars in /opt/kafka/libs.

use std::time::Duration;

use testcontainers::{GenericImage, ImageExt};
use tokio::net::TcpStream;

use super::images::name_and_tag;
use super::running::{self, ContainerError, RunningContainer};

/// The broker's properties, shared with scripts/lib/kafka-node.
const NODE_PROPERTIES: &str = include_str!("../../../scripts/lib/kafka-node.properties");
/// Where the broker listens for clients inside the container.
const CLIENT_PORT: u16 = 9092;
/// What the broker logs once it serves (KafkaRaftServer).
const STARTED: &str = "Kafka Server started";
/// Any valid cluster id: every container is a cluster of its own.
const CLUSTER_ID: &str = "4L6g3nShT-eMCtK--X86sw";

const LOG4J: &str = "\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = warn
";

const SCRIPT: &str = r#"set -e
printf '%s\n' "$NODE_PROPERTIES" > /tmp/server.properties
printf '%s\n' "$NODE_LOG4J" > /tmp/log4j2.properties
JAVA_OPTS="-Xms512m -Xmx512m -XX:+UseG1GC -Dlog4j2.configurationFile=/tmp/log4j2.properties"
java $JAVA_OPTS -cp '/opt/kafka/libs/*' kafka.tools.StorageTool format \
  --cluster-id "$CLUSTER_ID" --config /tmp/server.properties --ignore-formatted
exec java $JAVA_OPTS -cp '/opt/kafka/libs/*' kafka.Kafka /tmp/server.properties
"#;

/// The broker's properties for a container whose client port is published on `host_port`,
/// with `overrides` appended (later keys win).
pub fn properties(host_port: u16, overrides: &[(&str, &str)]) -> String {
    let mut properties = NODE_PROPERTIES
        .replace("@CONTROLLER@", "localhost:9094")
        .replace("@CLIENT_LISTENER@", &format!("0.0.0.0:{CLIENT_PORT}"))
        .replace("@ADVERTISED_CLIENT@", &format!("127.0.0.1:{host_port}"))
        .replace("@INTERNAL@", "localhost:9093")
        .replace("@LOG_DIRS@", "/tmp/kraft-data")
        .replace("@REBALANCE_DELAY_MS@", "0");
    for (key, value) in overrides {
        properties.push_str(&format!("{key}={value}\n"));
    }
    properties
}

/// Starts a broker from `image` and waits until it serves on the returned address.
pub async fn start(
    image: &str,
    overrides: &[(&str, &str)],
) -> Result<RunningContainer, ContainerError> {
    let (name, tag) = name_and_tag(image);
    let request_for = |host_port: u16| {
        GenericImage::new(name, tag)
            .with_entrypoint("sh")
            .with_cmd(["-c", SCRIPT])
            .with_env_var("NODE_PROPERTIES", properties(host_port, overrides))
            .with_env_var("NODE_LOG4J", LOG4J)
            .with_env_var("CLUSTER_ID", CLUSTER_ID)
    };
    let (container, host_port) = running::start(image, request_for, CLIENT_PORT).await?;
    let address = format!("127.0.0.1:{host_port}");
    let container = running::wait_until_ready(
        image,
        container,
        Duration::from_secs(120),
        async |container| {
            running::logs(container).await.contains(STARTED)
                && TcpStream::connect(&address).await.is_ok()
        },
    )
    .await?;
    Ok(RunningContainer { container, address })
}
