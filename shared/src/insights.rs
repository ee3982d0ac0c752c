//! A user's insights: their totals, the last 30 local days, achievements, and their
//! percentile among active users. Every figure is computed by `user_insights` in
//! `migrations/20250106400000_insights.sql` (one statement); the same per-user figures are
//! the `insights_*` views a supabase-js client can read. The comparison comes from a
//! histogram that `insights_refresh()` rebuilds on a schedule; the answer says how old it
//! is.

use serde_json::{Map, Value};

use crate::db::{self, SqlParam, UserDocument};
use crate::{settings, ApiError, Platform};

/// The insights document for `user_id` (the endpoint's 200 body).
pub fn for_user(platform: &dyn Platform, user_id: &str) -> Result<Map<String, Value>, ApiError> {
    let min_population = settings::INSIGHTS_MIN_POPULATION.parse::<i32>(platform)?;
    if min_population < 0 {
        return Err(settings::INSIGHTS_MIN_POPULATION.invalid());
    }
    let result = db::query_json(
        platform,
        "select public.user_insights($1::uuid, $2)",
        &[SqlParam::Uuid(user_id.to_string()), SqlParam::Int32(min_population)],
    )
    .map_err(|e| db::report(platform, "user_insights", e))?;

    match serde_json::from_value(result).map_err(|_| ApiError::internal("The insights could not be read."))? {
        UserDocument::Ok(document) => Ok(document),
        UserDocument::UnknownUser => Err(ApiError::user_not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SqlValue;
    use crate::fakes::FakePlatform;

    const USER: &str = "3f2a9c4e-1b7d-4c2e-9a6f-0e8d5b1c2a34";

    fn answering(vars: &[(&str, &str)], json: &str) -> FakePlatform {
        let platform = FakePlatform::with_vars(vars);
        platform.db_answers.borrow_mut().push_back(Ok(vec![vec![SqlValue::Json(json.as_bytes().to_vec())]]));
        platform
    }

    #[test]
    fn the_threshold_goes_to_the_database_and_the_outcome_is_dropped() {
        let platform = answering(&[("insights_min_population", "5")], r#"{"outcome":"ok","totals":{"sessions":0}}"#);
        let document = for_user(&platform, USER).unwrap();
        assert_eq!(Value::Object(document), serde_json::json!({"totals": {"sessions": 0}}));
        let queries = platform.queries.borrow();
        assert_eq!(queries.len(), 1, "one statement per request");
        assert_eq!(queries[0].1, vec![SqlParam::Uuid(USER.into()), SqlParam::Int32(5)]);
    }

    #[test]
    fn the_threshold_defaults_and_a_bad_one_is_a_config_error_before_any_query() {
        let platform = answering(&[], r#"{"outcome":"ok"}"#);
        for_user(&platform, USER).unwrap();
        assert_eq!(platform.queries.borrow()[0].1[1], SqlParam::Int32(20));

        for bad in ["-1", "twenty"] {
            let platform = answering(&[("insights_min_population", bad)], r#"{"outcome":"ok"}"#);
            let error = for_user(&platform, USER).unwrap_err();
            assert_eq!((error.status, error.code), (500, "config_invalid"), "{bad}");
            assert!(platform.queries.borrow().is_empty());
        }
    }

    #[test]
    fn an_unknown_user_is_a_404() {
        let platform = answering(&[], r#"{"outcome":"unknown_user"}"#);
        let error = for_user(&platform, USER).unwrap_err();
        assert_eq!((error.status, error.code), (404, "user_not_found"));
    }
}
