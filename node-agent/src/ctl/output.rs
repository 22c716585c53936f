//! `margayctl -o table|wide|json|yaml`: every command builds one serializable
//! answer; the format decides how it is printed. JSON and YAML carry the
//! same fields (stable names, for scripts); `table` is for people, `wide`
//! adds the columns that do not fit a terminal.

use serde::Serialize;

use super::CtlError;

/// How to print an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and sentences.
    #[default]
    Table,
    /// The table with every column.
    Wide,
    /// Pretty-printed JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// Whether the table should show its extra columns.
    pub fn wide(self) -> bool {
        self == Format::Wide
    }
}

/// Prints `data` as JSON/YAML, or calls `table(wide)` for the human forms.
pub fn emit<T: Serialize>(
    format: Format,
    data: &T,
    table: impl FnOnce(bool) -> String,
) -> Result<String, CtlError> {
    match format {
        Format::Table | Format::Wide => Ok(table(format.wide())),
        Format::Json => serde_json::to_string_pretty(data)
            .map(|s| s + "\n")
            .map_err(|e| CtlError::Usage(format!("cannot encode the answer as JSON: {e}"))),
        Format::Yaml => serde_yaml_ng::to_string(data)
            .map_err(|e| CtlError::Usage(format!("cannot encode the answer as YAML: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Answer {
        name: &'static str,
        count: u32,
    }

    #[test]
    fn every_format_prints_the_same_answer() {
        let a = Answer {
            name: "pool-a",
            count: 3,
        };
        let table =
            |wide: bool| format!("{} {}{}", a.name, a.count, if wide { " extra" } else { "" });
        assert_eq!(
            emit(Format::Table, &a, table).ok().as_deref(),
            Some("pool-a 3")
        );
        assert_eq!(
            emit(Format::Wide, &a, table).ok().as_deref(),
            Some("pool-a 3 extra")
        );
        let json: serde_json::Value =
            serde_json::from_str(&emit(Format::Json, &a, table).expect("json")).expect("parses");
        assert_eq!(json, serde_json::json!({"name": "pool-a", "count": 3}));
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&emit(Format::Yaml, &a, table).expect("yaml")).expect("parses");
        assert_eq!(yaml, json);
    }
}
