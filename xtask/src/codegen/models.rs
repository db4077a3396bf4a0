//! Rust types from Swagger schemas: every definition, plus every inline
//! schema the operations use, named from where it appears.

use super::naming::{doc_comment, pascal_case, snake_case, variant_name};
use crate::quirks;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write;

pub struct Models<'a> {
    spec: &'a Value,
    items: Vec<Item>,
    /// Every type name handed out, with the schema it stands for, so one
    /// inline schema reached twice (through `allOf`) yields one type.
    names: HashMap<String, Value>,
    /// The `quirks` entries about required fields that matched a field, so
    /// a stale one (its type or field renamed away) fails generation.
    used_quirks: Vec<(&'static str, &'static str)>,
}

enum Item {
    Struct {
        name: String,
        doc: String,
        fields: Vec<Field>,
    },
    Enum {
        name: String,
        doc: String,
        values: Vec<String>,
    },
    Alias {
        name: String,
        doc: String,
        ty: String,
    },
}

struct Field {
    rust_name: String,
    json_name: String,
    ty: String,
    doc: String,
    /// Listed in the schema's `required` (as adjusted by
    /// [`quirks::NOT_REQUIRED`] and [`quirks::EXTRA_REQUIRED`]): a plain
    /// field that must be present, not an `Option`.
    required: bool,
}

/// One property of an object, with the type that declares it (for names of
/// inline types and quirk lookups), after `allOf` merging.
struct Property<'s> {
    owner: String,
    name: String,
    schema: &'s Value,
    /// In the `required` list of the schema (or an `allOf` part) declaring it.
    required: bool,
}

impl<'a> Models<'a> {
    pub fn new(spec: &'a Value) -> Self {
        let mut names = HashMap::new();
        for (name, schema) in definitions(spec) {
            names.insert(name.clone(), schema.clone());
        }
        Models {
            spec,
            items: Vec::new(),
            names,
            used_quirks: Vec::new(),
        }
    }

    pub fn type_count(&self) -> usize {
        self.items.len()
    }

    /// Every `quirks::NOT_REQUIRED`/`EXTRA_REQUIRED` entry must have
    /// changed a field; one that did not names a type or field the spec no
    /// longer has (or one already required/optional), and is an error.
    pub fn check_required_quirks(&self) -> Result<(), super::CodegenError> {
        let unused: Vec<String> = quirks::NOT_REQUIRED
            .iter()
            .chain(quirks::EXTRA_REQUIRED)
            .filter(|(ty, field, _)| !self.used_quirks.contains(&(*ty, *field)))
            .map(|(ty, field, _)| format!("{ty}.{field}"))
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(super::CodegenError::UnusedQuirks(unused))
        }
    }

    /// Emits a type for every entry of `definitions`, in spec order.
    pub fn add_definitions(&mut self) {
        for (name, schema) in definitions(self.spec) {
            self.define(name, schema);
        }
    }

    /// The Rust type for a use of `schema`; inline schemas needing a type of
    /// their own get one called `hint`.
    pub fn resolve(&mut self, schema: &Value, hint: &str) -> String {
        if let Some(name) = ref_name(schema) {
            return name.to_owned();
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            // `allOf: [$ref, {example only}]` is just the referenced type.
            let adds_properties = |p: &Value| ref_name(p).is_none() && has_properties(p);
            let refs: Vec<&str> = parts.iter().filter_map(ref_name).collect();
            if refs.len() == 1 && !parts.iter().any(adds_properties) {
                return refs[0].to_owned();
            }
            return self.inline(hint, schema);
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") if schema.get("enum").is_some() => self.inline(hint, schema),
            Some("string") => "String".to_owned(),
            Some("integer") => integer_type(schema).to_owned(),
            Some("number") => "f64".to_owned(),
            Some("boolean") => "bool".to_owned(),
            Some("array") => {
                let item = match schema.get("items") {
                    Some(items) => self.resolve_nullable(items, &format!("{hint}Item")),
                    None => "serde_json::Value".to_owned(),
                };
                format!("Vec<{item}>")
            }
            _ if has_properties(schema) => self.inline(hint, schema),
            _ => match schema.get("additionalProperties") {
                Some(value) if value.as_object().is_some_and(|o| !o.is_empty()) => {
                    let value = self.resolve_nullable(value, &format!("{hint}Value"));
                    format!("std::collections::HashMap<String, {value}>")
                }
                _ => "serde_json::Value".to_owned(),
            },
        }
    }

    /// Map values and array items the spec marks `x-nullable` arrive as `null`.
    fn resolve_nullable(&mut self, schema: &Value, hint: &str) -> String {
        let ty = self.resolve(schema, hint);
        if is_nullable(schema) || ref_name(schema).is_some_and(|r| self.def_nullable(r)) {
            format!("Option<{ty}>")
        } else {
            ty
        }
    }

    fn def_nullable(&self, name: &str) -> bool {
        self.spec["definitions"].get(name).is_some_and(is_nullable)
    }

    /// Registers `hint` for an inline schema (or finds it registered for the
    /// same schema) and emits its type.
    fn inline(&mut self, hint: &str, schema: &Value) -> String {
        let mut name = hint.to_owned();
        let mut n = 2;
        loop {
            match self.names.get(&name) {
                Some(existing) if existing == schema => return name,
                Some(_) => {
                    name = format!("{hint}{n}");
                    n += 1;
                }
                None => break,
            }
        }
        self.names.insert(name.clone(), schema.clone());
        self.define(&name, schema);
        name
    }

    fn define(&mut self, name: &str, schema: &Value) {
        let doc = doc_comment(description(schema));
        let is_object = has_properties(schema) || schema.get("allOf").is_some();
        let is_string_enum = schema.get("type").and_then(Value::as_str) == Some("string")
            && schema.get("enum").is_some();
        if is_object {
            // Reserve the slot first so the struct precedes the inline types
            // its fields define.
            let index = self.items.len();
            self.items.push(Item::Alias {
                name: name.to_owned(),
                doc: String::new(),
                ty: String::new(),
            });
            let fields = self.fields(name, schema);
            self.items[index] = Item::Struct {
                name: name.to_owned(),
                doc,
                fields,
            };
        } else if is_string_enum {
            let mut values: Vec<String> = schema["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            for (ty, extra, _why) in quirks::EXTRA_ENUM_VALUES {
                if *ty == name {
                    values.extend(extra.iter().map(|v| v.to_string()));
                }
            }
            let mut seen = Vec::new();
            values.retain(|v| {
                let new = !seen.contains(v);
                seen.push(v.clone());
                new
            });
            self.items.push(Item::Enum {
                name: name.to_owned(),
                doc,
                values,
            });
        } else {
            // Reserve the slot first: the alias's target may define more types.
            let index = self.items.len();
            self.items.push(Item::Alias {
                name: name.to_owned(),
                doc: doc.clone(),
                ty: String::new(),
            });
            let mut shallow = schema.clone();
            shallow.as_object_mut().map(|o| o.remove("enum"));
            let ty = self.resolve(&shallow, name);
            self.items[index] = Item::Alias {
                name: name.to_owned(),
                doc,
                ty,
            };
        }
    }

    fn fields(&mut self, name: &str, schema: &Value) -> Vec<Field> {
        let mut props = Vec::new();
        collect_properties(self.spec, schema, name, &mut props);
        let mut fields: Vec<Field> = Vec::new();
        for prop in props {
            let override_ty = quirks::FIELD_TYPES
                .iter()
                .find(|(ty, field, _, _)| *ty == prop.owner && *field == prop.name)
                .map(|(_, _, rust, _)| rust.to_string());
            let mut ty = match override_ty {
                Some(ty) => ty,
                None => {
                    let hint = format!("{}{}", prop.owner, pascal_case(&prop.name));
                    self.resolve(prop.schema, &hint)
                }
            };
            if ty == name {
                ty = format!("Box<{ty}>");
            }
            let required = self.is_required(&prop);
            let mut rust_name = snake_case(&prop.name);
            while fields.iter().any(|f| f.rust_name == rust_name) {
                rust_name.push('_');
            }
            fields.push(Field {
                rust_name,
                json_name: prop.name,
                ty,
                doc: doc_comment(description(prop.schema)),
                required,
            });
        }
        fields
    }

    /// Required per the spec, unless an engine omits it; or required by a
    /// quirk although the spec says optional. A nullable field stays
    /// optional whatever the list says: `null` must decode.
    fn is_required(&mut self, prop: &Property) -> bool {
        let matches = |list: &[(&'static str, &'static str, &str)]| {
            list.iter()
                .find(|(ty, field, _)| *ty == prop.owner && *field == prop.name)
                .map(|(ty, field, _)| (*ty, *field))
        };
        if is_nullable(prop.schema) {
            return false;
        }
        if prop.required {
            if let Some(hit) = matches(quirks::NOT_REQUIRED) {
                self.used_quirks.push(hit);
                return false;
            }
            return true;
        }
        if let Some(hit) = matches(quirks::EXTRA_REQUIRED) {
            self.used_quirks.push(hit);
            return true;
        }
        false
    }

    /// Whether `ty` has a `Default` impl, so a struct holding it as a
    /// required field can still derive one. Enums have none (no value is
    /// the obvious default); aliases and boxes are what they stand for.
    fn has_default(&self, ty: &str, seen: &mut Vec<String>) -> bool {
        if let Some(inner) = ty.strip_prefix("Box<").and_then(|t| t.strip_suffix('>')) {
            return self.has_default(inner, seen);
        }
        let open = ["Option<", "Vec<", "std::collections::HashMap<"];
        let plain = ["String", "i64", "u64", "f64", "bool", "serde_json::Value"];
        if open.iter().any(|p| ty.starts_with(p)) || plain.contains(&ty) {
            return true;
        }
        if seen.iter().any(|s| s == ty) {
            return true; // a cycle: decided by the other fields
        }
        seen.push(ty.to_owned());
        let found = self.items.iter().find_map(|item| match item {
            Item::Struct { name, fields, .. } if name == ty => Some(
                fields
                    .iter()
                    .filter(|f| f.required)
                    .all(|f| self.has_default(&f.ty, seen)),
            ),
            Item::Enum { name, .. } if name == ty => Some(false),
            Item::Alias {
                name, ty: target, ..
            } if name == ty => Some(self.has_default(target, seen)),
            _ => None,
        });
        seen.pop();
        found.unwrap_or(true)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for item in &self.items {
            match item {
                Item::Struct { name, doc, fields } => {
                    let default = self.has_default(name, &mut Vec::new());
                    render_struct(&mut out, name, doc, fields, default)
                }
                Item::Enum { name, doc, values } => render_enum(&mut out, name, doc, values),
                Item::Alias { name, doc, ty } => {
                    let _ = writeln!(out, "{doc}pub type {name} = {ty};\n");
                }
            }
        }
        out
    }
}

/// Required fields are plain and always sent; the rest are `Option`, unset
/// ones not sent. Without `default`, serde rejects an answer missing a
/// required field with "missing field `Name`".
fn render_struct(out: &mut String, name: &str, doc: &str, fields: &[Field], default: bool) {
    let default = if default { "Default, " } else { "" };
    let _ = writeln!(
        out,
        "{doc}#[derive(Debug, Clone, {default}PartialEq, Serialize, Deserialize)]\npub struct {name} {{"
    );
    for f in fields {
        let bare = f.rust_name.trim_start_matches("r#");
        let rename = if bare == f.json_name {
            String::new()
        } else {
            format!("rename = \"{}\", ", f.json_name)
        };
        if f.required {
            let attr = if rename.is_empty() {
                String::new()
            } else {
                format!("#[serde(rename = \"{}\")]\n", f.json_name)
            };
            let _ = writeln!(out, "{}{attr}pub {}: {},", f.doc, f.rust_name, f.ty);
            continue;
        }
        let _ = writeln!(
            out,
            "{}#[serde({rename}default, skip_serializing_if = \"Option::is_none\")]\npub {}: Option<{}>,",
            f.doc, f.rust_name, f.ty
        );
    }
    out.push_str("}\n\n");
}

/// An open enum: known values get variants, anything else is kept verbatim
/// in `Other`, so a daemon newer than the spec (or Podman) cannot make a
/// whole response fail to decode.
fn render_enum(out: &mut String, name: &str, doc: &str, values: &[String]) {
    let mut variants: Vec<(String, &str)> = Vec::new();
    for v in values {
        let mut variant = variant_name(v);
        while variant == "Other" || variants.iter().any(|(n, _)| *n == variant) {
            variant.push('_');
        }
        variants.push((variant, v));
    }
    let _ = writeln!(
        out,
        "{doc}#[derive(Debug, Clone, PartialEq, Eq, Hash)]\npub enum {name} {{"
    );
    for (variant, value) in &variants {
        let _ = writeln!(out, "/// `{value:?}`\n{variant},");
    }
    out.push_str("/// A value these bindings do not know, kept as sent.\nOther(String),\n}\n\n");

    let _ = writeln!(out, "impl {name} {{\n/// The value on the wire.\npub fn as_str(&self) -> &str {{\nmatch self {{");
    for (variant, value) in &variants {
        let _ = writeln!(out, "Self::{variant} => {value:?},");
    }
    out.push_str("Self::Other(s) => s,\n}\n}\n}\n\n");

    let _ = writeln!(
        out,
        "impl From<&str> for {name} {{\nfn from(s: &str) -> Self {{\nmatch s {{"
    );
    for (variant, value) in &variants {
        let _ = writeln!(out, "{value:?} => Self::{variant},");
    }
    out.push_str("other => Self::Other(other.to_owned()),\n}\n}\n}\n\n");

    let _ = writeln!(
        out,
        "impl std::fmt::Display for {name} {{\n\
         fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {{ f.write_str(self.as_str()) }}\n}}\n\n\
         impl Serialize for {name} {{\n\
         fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {{ serializer.serialize_str(self.as_str()) }}\n}}\n\n\
         impl<'de> Deserialize<'de> for {name} {{\n\
         fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {{\n\
         let s = String::deserialize(deserializer)?;\nOk(Self::from(s.as_str()))\n}}\n}}\n"
    );
}

fn collect_properties<'s>(
    spec: &'s Value,
    schema: &'s Value,
    owner: &str,
    out: &mut Vec<Property<'s>>,
) {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(name) = ref_name(schema) {
        let target = &spec["definitions"][name];
        return collect_properties(spec, target, name, out);
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        collect_properties(spec, part, owner, out);
    }
    for (name, prop) in schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let prop = Property {
            owner: owner.to_owned(),
            name: name.clone(),
            schema: prop,
            required: required.contains(&name.as_str()),
        };
        match out.iter_mut().find(|p| p.name == *name) {
            Some(existing) => *existing = prop,
            None => out.push(prop),
        }
    }
}

fn definitions(spec: &Value) -> impl Iterator<Item = (&String, &Value)> {
    spec["definitions"].as_object().into_iter().flatten()
}

pub fn ref_name(schema: &Value) -> Option<&str> {
    schema.get("$ref")?.as_str()?.strip_prefix("#/definitions/")
}

fn has_properties(schema: &Value) -> bool {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty())
}

fn is_nullable(schema: &Value) -> bool {
    schema.get("x-nullable").and_then(Value::as_bool) == Some(true)
}

pub fn description(schema: &Value) -> Option<&str> {
    schema
        .get("description")
        .or_else(|| schema.get("title"))
        .and_then(Value::as_str)
}

/// Integers are `i64` unless the spec says `uint64`: Docker sends -1 for
/// "unlimited" in fields declared unsigned of smaller widths.
pub fn integer_type(schema: &Value) -> &'static str {
    match schema.get("format").and_then(Value::as_str) {
        Some("uint64") => "u64",
        _ => "i64",
    }
}
