//! Path parameters both HTTP APIs take, as their OpenAPI documents state them: the same bounds
//! the domain enforces (command-api's `openapi` tests check the identifier pattern against
//! `domain::values`). Only the documents use these types; handlers read the path as a string.

use utoipa::IntoParams;

/// `{customer_id}` in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CustomerIdPath {
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub customer_id: String,
}

/// `{sku}` in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SkuPath {
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub sku: String,
}

/// `{order_id}` in a path: the UUID the order was placed under (anything else is 404).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrderIdPath {
    #[param(format = Uuid)]
    pub order_id: String,
}
