//! TEMPORARY local placeholder (not committed): the API helper H2 is writing.
pub struct Source<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub partition: &'a str,
    pub peer: &'a str,
}
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
}
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}
pub struct Table {
    d: Decision,
}
impl Table {
    pub fn from_json(s: &str) -> Result<Table, String> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| e.to_string())?;
        Ok(Table {
            d: Decision {
                allowed: v
                    .get("default_allow")
                    .and_then(|x| x.as_bool())
                    .unwrap_or(false),
                reason: "placeholder".into(),
            },
        })
    }
    pub fn authorize_l4(&self, _s: &Source) -> &Decision {
        &self.d
    }
    pub fn authorize_http(&self, _s: &Source, _r: &Request) -> &Decision {
        &self.d
    }
}
