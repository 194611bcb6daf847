//! What a valid LiveKit access token grants a connection.

/// What a valid token grants.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub identity: String,
    pub name: String,
    pub room: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
}
