//! Input images a batch's lines name as local files: the URL each distinct file (by its content
//! hash) was hosted at, and until when it is valid, so a later line or a later run reuses it
//! rather than upload again.

use sqlx::Row;

use super::Store;
use crate::error::Error;

impl Store {
    /// The URL the file of content `sha256` was hosted at, and until when it is valid (seconds
    /// since 1970), if that is after `until`.
    pub async fn hosted_input(
        &self,
        sha256: &str,
        until: i64,
    ) -> Result<Option<(String, i64)>, Error> {
        let row = sqlx::query(
            "SELECT url, expires_at FROM gptimage_uploads WHERE sha256 = $1 AND expires_at > $2",
        )
        .bind(sha256.to_owned())
        .bind(until)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        row.map(|r| Ok((r.try_get("url")?, r.try_get("expires_at")?)))
            .transpose()
            .map_err(|e: sqlx::Error| self.error(e))
    }

    /// Records that the file of content `sha256` is at `url` until `expires_at` (seconds since
    /// 1970), replacing an older record.
    pub async fn record_hosted_input(
        &self,
        sha256: &str,
        url: &str,
        expires_at: i64,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO gptimage_uploads (sha256, url, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (sha256) DO UPDATE SET url = excluded.url, expires_at = excluded.expires_at",
        )
        .bind(sha256.to_owned())
        .bind(url.to_owned())
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(())
    }
}
