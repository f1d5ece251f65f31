//! Resource quantities (`500m`, `128Mi`, `1e3`) as exact integers, for the downward API's
//! `resourceFieldRef` (environment variables and volume files).

use k8s_openapi::api::core::v1::{Container, ResourceFieldSelector};

/// What the node reports as allocatable; used for limits a container does not set, as a
/// kubelet does.
pub(crate) const NODE_CPU: &str = "8";
/// Node memory (see [`NODE_CPU`]).
pub(crate) const NODE_MEMORY: &str = "32Gi";
/// Node ephemeral storage (see [`NODE_CPU`]).
pub(crate) const NODE_EPHEMERAL_STORAGE: &str = "100Gi";
/// Pods per node (see [`NODE_CPU`]).
pub(crate) const NODE_PODS: &str = "110";

/// Parses a quantity into billionths of its unit.
pub(crate) fn parse_nanos(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (negative, number) = match number.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !(int_part.chars().all(|c| c.is_ascii_digit())
        && frac_part.chars().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    // The number as a fraction: digits / 10^frac_len.
    let digits: i128 = format!("{int_part}{frac_part}").parse().ok()?;
    let frac_len = u32::try_from(frac_part.len()).ok()?;
    let (mul, exp10): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        s if s.starts_with(['e', 'E']) => (1, s[1..].parse().ok()?),
        _ => return None,
    };
    // value * 1e9 = digits * mul * 10^(exp10 + 9 - frac_len), rounded up like the API.
    let exp = exp10 + 9 - i32::try_from(frac_len).ok()?;
    let scaled = digits.checked_mul(mul)?;
    let value = if exp >= 0 {
        scaled.checked_mul(10i128.checked_pow(u32::try_from(exp).ok()?)?)?
    } else {
        let div = 10i128.checked_pow(u32::try_from(-exp).ok()?)?;
        (scaled + div - 1) / div
    };
    Some(if negative { -value } else { value })
}

/// The value of a `resourceFieldRef` for `container`, as a kubelet computes it: the limit
/// (or the node's allocatable without one) or the request, divided by the divisor and
/// rounded up.
pub(crate) fn resource_field_value(
    container: &Container,
    selector: &ResourceFieldSelector,
) -> Result<String, String> {
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resourceFieldRef {:?}", selector.resource))?;
    let node_default = match resource {
        "cpu" => NODE_CPU,
        "memory" => NODE_MEMORY,
        "ephemeral-storage" => NODE_EPHEMERAL_STORAGE,
        _ => {
            return Err(format!(
                "unsupported resourceFieldRef {:?}",
                selector.resource
            ))
        }
    };
    let resources = container.resources.as_ref();
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(format!(
                "unsupported resourceFieldRef {:?}",
                selector.resource
            ))
        }
    }
    .and_then(|m| m.get(resource))
    .map(|q| q.0.as_str());
    let value = match (kind, set) {
        (_, Some(v)) => v,
        ("limits", None) => node_default,
        _ => "0",
    };
    let value = parse_nanos(value).ok_or_else(|| format!("invalid quantity {value:?}"))?;
    let divisor = selector.divisor.as_ref().map_or("1", |d| d.0.as_str());
    let divisor = parse_nanos(divisor)
        .filter(|d| *d > 0)
        .ok_or_else(|| format!("invalid divisor {divisor:?}"))?;
    let result = (value + divisor - 1).div_euclid(divisor);
    Ok(result.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    /// One whole unit, in nanos.
    const ONE: i128 = 1_000_000_000;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_nanos("1"), Some(ONE));
        assert_eq!(parse_nanos("500m"), Some(ONE / 2));
        assert_eq!(parse_nanos("0.5"), Some(ONE / 2));
        assert_eq!(parse_nanos("128Mi"), Some(128 * (1 << 20) * ONE));
        assert_eq!(parse_nanos("1k"), Some(1000 * ONE));
        assert_eq!(parse_nanos("1e3"), Some(1000 * ONE));
        assert_eq!(parse_nanos("1.5Gi"), Some(3 * (1 << 29) * ONE));
        assert_eq!(parse_nanos("1n"), Some(1));
        assert_eq!(parse_nanos("-2"), Some(-2 * ONE));
        assert_eq!(parse_nanos("abc"), None);
        assert_eq!(parse_nanos("1Xi"), None);
        assert_eq!(parse_nanos(""), None);
    }

    fn container(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect(),
            )
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: map(limits),
                requests: map(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn field(resource: &str, divisor: Option<&str>) -> ResourceFieldSelector {
        ResourceFieldSelector {
            resource: resource.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
            container_name: None,
        }
    }

    #[test]
    fn resource_fields_round_up() {
        let c = container(&[("cpu", "250m"), ("memory", "64Mi")], &[("cpu", "100m")]);
        assert_eq!(
            resource_field_value(&c, &field("limits.cpu", None)).as_deref(),
            Ok("1")
        );
        assert_eq!(
            resource_field_value(&c, &field("limits.cpu", Some("1m"))).as_deref(),
            Ok("250")
        );
        assert_eq!(
            resource_field_value(&c, &field("limits.memory", Some("1Mi"))).as_deref(),
            Ok("64")
        );
        assert_eq!(
            resource_field_value(&c, &field("requests.cpu", Some("1m"))).as_deref(),
            Ok("100")
        );
        assert_eq!(
            resource_field_value(&c, &field("requests.memory", None)).as_deref(),
            Ok("0")
        );
        let none = container(&[], &[]);
        assert_eq!(
            resource_field_value(&none, &field("limits.cpu", None)).as_deref(),
            Ok("8")
        );
        assert!(resource_field_value(&none, &field("limits.gpu", None)).is_err());
        assert!(resource_field_value(&none, &field("cpu", None)).is_err());
    }
}
