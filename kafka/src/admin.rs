//! Topic creation (`orderflow topics create`, and `orderflow run` on start).

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};

use crate::{Error, KafkaConfig, Result};

/// How topics are created.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    pub partitions: i32,
    pub replication_factor: i32,
    /// `retention.ms`; `None` keeps the broker's default.
    pub retention: Option<Duration>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            partitions: 3,
            replication_factor: 1,
            retention: None,
        }
    }
}

/// Creates every catalogue topic that does not exist yet. Returns the names it created.
pub async fn create_topics(config: &KafkaConfig, settings: &TopicSettings) -> Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = config.admin_config().create()?;
    let names = config.topics.all();
    let retention = settings.retention.map(|r| r.as_millis().to_string());
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            );
            match &retention {
                Some(ms) => topic.set("retention.ms", ms),
                None => topic,
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(topics.iter(), &options).await?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Admin(format!("cannot create topic {name}: {code}")))
            }
        }
    }
    Ok(created)
}
