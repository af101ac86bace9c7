//! Hybrid search: reciprocal rank fusion of the ranked lists of several search channels, and
//! the merge of fused hits that describe the same moment into time windows.
//!
//! Reciprocal rank fusion (Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion outperforms
//! Condorcet and individual Rank Learning Methods", SIGIR 2009) scores a point by
//! `Σ_c weight_c / (k + rank_c)` over the channels `c` that returned it, `rank_c` starting at 1.
//! It reads ranks only, so channels whose raw scores live on different scales (the cosine of
//! two different models, a word-match score) combine without calibration, and a point that
//! several channels agree on rises above one that a single channel put first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::{Hit, NormalizedBox, PointPayload, vector_names};

/// One way of finding moments for a query; each yields its own ranked list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Sentence embedding of the query text against the captions' `text` vectors.
    Caption,
    /// PE-Core text embedding of the query against the moments' `visual` (frame) vectors.
    Visual,
    /// PE-Core text embedding of the query against the `region` (crop) vectors.
    Region,
    /// Words of the query matched in the caption text.
    Lexical,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::Caption,
        Channel::Visual,
        Channel::Region,
        Channel::Lexical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Caption => "caption",
            Channel::Visual => "visual",
            Channel::Region => "region",
            Channel::Lexical => "lexical",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "caption" => Some(Channel::Caption),
            "visual" => Some(Channel::Visual),
            "region" => Some(Channel::Region),
            "lexical" => Some(Channel::Lexical),
            _ => None,
        }
    }

    /// The named vector the channel searches; `None` for the lexical channel.
    pub fn vector_name(self) -> Option<&'static str> {
        match self {
            Channel::Caption => Some(vector_names::TEXT),
            Channel::Visual => Some(vector_names::VISUAL),
            Channel::Region => Some(vector_names::REGION),
            Channel::Lexical => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The `k` of the paper: it damps the lead of the first ranks over the following ones.
pub const DEFAULT_RANK_CONSTANT: f64 = 60.0;

/// How much each channel's ranks count in the fused score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelWeights {
    pub caption: f64,
    pub visual: f64,
    pub region: f64,
    pub lexical: f64,
}

impl Default for ChannelWeights {
    fn default() -> Self {
        Self {
            caption: 1.0,
            visual: 1.0,
            region: 1.0,
            lexical: 1.0,
        }
    }
}

impl ChannelWeights {
    pub fn get(&self, channel: Channel) -> f64 {
        match channel {
            Channel::Caption => self.caption,
            Channel::Visual => self.visual,
            Channel::Region => self.region,
            Channel::Lexical => self.lexical,
        }
    }

    pub fn set(&mut self, channel: Channel, weight: f64) {
        match channel {
            Channel::Caption => self.caption = weight,
            Channel::Visual => self.visual = weight,
            Channel::Region => self.region = weight,
            Channel::Lexical => self.lexical = weight,
        }
    }
}

/// Tuning of the fusion: `score = Σ_c weights[c] / (rank_constant + rank_c)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionSettings {
    pub rank_constant: f64,
    pub weights: ChannelWeights,
}

impl Default for FusionSettings {
    fn default() -> Self {
        Self {
            rank_constant: DEFAULT_RANK_CONSTANT,
            weights: ChannelWeights::default(),
        }
    }
}

/// A fusion setting that would make scores meaningless (negative, NaN, infinite).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidFusionSetting {
    /// The offending key, relative to the fusion settings (`rank_constant`, `weights.visual`).
    pub field: String,
    pub reason: String,
}

impl FusionSettings {
    /// Every value finite and non-negative. A zero weight is allowed: the channel's ranks are
    /// still reported but add nothing to the score.
    pub fn validate(&self) -> Result<(), InvalidFusionSetting> {
        let check = |field: String, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(InvalidFusionSetting {
                    field,
                    reason: format!("must be a finite number >= 0, got {value}"),
                })
            }
        };
        check("rank_constant".into(), self.rank_constant)?;
        for channel in Channel::ALL {
            check(format!("weights.{channel}"), self.weights.get(channel))?;
        }
        Ok(())
    }
}

/// Where one channel ranked a point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChannelScore {
    /// 1 for the channel's best hit.
    pub rank: u32,
    /// The channel's own score (cosine similarity, match score); not comparable across
    /// channels.
    pub score: f32,
}

/// A point after fusion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusedHit {
    pub id: Uuid,
    /// `Σ weight_c / (k + rank_c)` over the channels that returned the point.
    pub score: f64,
    pub payload: PointPayload,
    /// Every channel that returned the point, with its rank and score there.
    pub channels: BTreeMap<Channel, ChannelScore>,
}

/// Each channel's own score for a hit, for the channels that found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelScores {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<f32>,
    /// Caption similarity of a hit whose caption shares a word with the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<f32>,
}

/// One search hit as every surface shows it — `vidx.v1.Hit` over gRPC, `vidx search` as
/// text and as JSON, locally or over `--endpoint` — built once from a fused hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub id: String,
    pub stream_id: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub caption: String,
    /// caption, subtitle, frame, segment or region.
    pub kind: String,
    /// The fused score (the channel's own similarity when one channel was searched).
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_seq: Option<u64>,
    pub scores: ChannelScores,
    /// `[x0, y0, x1, y1]` in 0..1 for region records.
    #[serde(rename = "box", default, skip_serializing_if = "Option::is_none")]
    pub region: Option<[f32; 4]>,
    pub source_uri: String,
    /// Where the hit's thumbnail (a JPEG) is: `/v1/thumbnails/<id>.jpg` on the query node's
    /// HTTP listener (a `file://` path for the local index's `vidx search --json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
    /// The models that made the hit (a reindex with new models changes it).
    #[serde(default)]
    pub model_rev: String,
    /// The stream's labels, from its submission.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl From<&FusedHit> for SearchHit {
    fn from(hit: &FusedHit) -> Self {
        let channel = |channel: Channel| hit.channels.get(&channel).map(|score| score.score);
        let payload = &hit.payload;
        SearchHit {
            id: hit.id.to_string(),
            stream_id: payload.stream_id.clone(),
            start_ms: payload.start_ms,
            end_ms: payload.end_ms,
            caption: payload.caption.clone(),
            kind: payload.kind.as_str().to_string(),
            score: hit.score as f32,
            segment_seq: Some(payload.segment_seq),
            scores: ChannelScores {
                caption: channel(Channel::Caption),
                visual: channel(Channel::Visual),
                region: channel(Channel::Region),
                lexical: channel(Channel::Lexical),
            },
            region: payload
                .region
                .map(|region| [region.x0, region.y0, region.x1, region.y1]),
            source_uri: payload.source_uri.clone(),
            thumbnail_url: payload
                .thumbnail
                .as_ref()
                .map(|_| format!("/v1/thumbnails/{}.jpg", hit.id)),
            model_rev: payload.model_rev.clone(),
            labels: crate::labels::to_map(&payload.labels),
        }
    }
}

impl FusedHit {
    /// The best (lowest) rank any channel gave the point.
    pub fn best_rank(&self) -> u32 {
        self.channels
            .values()
            .map(|channel_score| channel_score.rank)
            .min()
            .unwrap_or(u32::MAX)
    }
}

/// Fuse the ranked lists (best first) of the channels into one list of at most `top_k` hits,
/// best first.
///
/// Ties in the fused score are broken by the best single rank (a point some channel put
/// first wins), then by id, so the order is deterministic. A point listed twice by one channel
/// counts once there, at its first (best) position. The payload is the point's, taken from
/// the first channel (in `Channel` order) that returned it.
pub fn fuse(
    ranked_by_channel: BTreeMap<Channel, Vec<Hit>>,
    settings: &FusionSettings,
    top_k: usize,
) -> Vec<FusedHit> {
    if top_k == 0 {
        return Vec::new();
    }
    let mut candidates: HashMap<Uuid, FusedHit> = HashMap::new();
    for (channel, hits) in ranked_by_channel {
        for (position, hit) in hits.into_iter().enumerate() {
            // Ranks start at 1: the best hit adds weight / (k + 1).
            let rank = u32::try_from(position + 1).unwrap_or(u32::MAX);
            let channel_score = ChannelScore {
                rank,
                score: hit.score,
            };
            candidates
                .entry(hit.id)
                .or_insert_with(|| FusedHit {
                    id: hit.id,
                    score: 0.0,
                    payload: hit.payload,
                    channels: BTreeMap::new(),
                })
                .channels
                .entry(channel)
                .or_insert(channel_score);
        }
    }
    let mut fused: Vec<FusedHit> = candidates
        .into_values()
        .map(|mut candidate| {
            candidate.score = fused_score(&candidate.channels, settings);
            candidate
        })
        .collect();
    fused.sort_by(|left, right| {
        right
            .score
            .total_cmp(&left.score)
            .then_with(|| left.best_rank().cmp(&right.best_rank()))
            .then_with(|| left.id.cmp(&right.id))
    });
    fused.truncate(top_k);
    fused
}

fn fused_score(channels: &BTreeMap<Channel, ChannelScore>, settings: &FusionSettings) -> f64 {
    let mut contributions: Vec<f64> = channels
        .iter()
        .map(|(channel, channel_score)| {
            settings.weights.get(*channel)
                / (settings.rank_constant + f64::from(channel_score.rank))
        })
        .collect();
    // Floating-point addition is not associative: summing in a fixed order of the values
    // (largest first), not of the channels, gives two points with the same ranks in swapped
    // channels bit-identical scores, so the tie-break decides between them, not rounding.
    contributions.sort_by(|left, right| right.total_cmp(left));
    contributions.into_iter().sum()
}

/// A region box of a window's member, with the member's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRegion {
    pub id: Uuid,
    pub start_ms: u64,
    pub end_ms: u64,
    pub region: NormalizedBox,
}

/// Fused hits of one stream that are one moment: their time ranges overlap or are close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MomentWindow {
    pub tenant: String,
    pub stream_id: String,
    /// The earliest start of the members.
    pub start_ms: u64,
    /// The latest end of the members.
    pub end_ms: u64,
    /// The best member's fused score.
    pub score: f64,
    /// The best member (also in `members`).
    pub best: FusedHit,
    /// Every merged hit, best first, `best` included.
    pub members: Vec<FusedHit>,
    /// The boxes of the members that carry one, best first.
    pub regions: Vec<WindowRegion>,
}

/// Merge fused hits into moment windows, best window first.
///
/// Two hits of the same tenant and stream join a window when their time ranges overlap or the
/// gap between them is at most `max_gap_ms` (a range that ends where the next starts has a gap
/// of 0). Joining is transitive: A near B and B near C make one window even when A and C are
/// far apart. The record kind plays no part (a subtitle and a caption of the same instant are
/// the same moment); different streams or tenants never merge. A window scores as its best
/// member; equal scores keep the order of `hits` (pass them in fused order).
pub fn merge_windows(hits: Vec<FusedHit>, max_gap_ms: u64) -> Vec<MomentWindow> {
    // Each hit's position in `hits` is the tie-breaker between equal scores below.
    let mut by_time: Vec<usize> = (0..hits.len()).collect();
    by_time.sort_by(|&left, &right| {
        let (left_payload, right_payload) = (&hits[left].payload, &hits[right].payload);
        (
            &left_payload.tenant,
            &left_payload.stream_id,
            left_payload.start_ms,
            left,
        )
            .cmp(&(
                &right_payload.tenant,
                &right_payload.stream_id,
                right_payload.start_ms,
                right,
            ))
    });

    // One sweep per stream in start order: a hit joins the open window when it starts no later
    // than `max_gap_ms` after the window's latest end so far.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut open_end_ms = 0u64;
    for index in by_time {
        let payload = &hits[index].payload;
        // A range whose end lies before its start is read as empty at its start.
        let end_ms = payload.end_ms.max(payload.start_ms);
        let joins_open_window = groups.last().is_some_and(|group| {
            let first = &hits[group[0]].payload;
            first.tenant == payload.tenant
                && first.stream_id == payload.stream_id
                && payload.start_ms <= open_end_ms.saturating_add(max_gap_ms)
        });
        match groups.last_mut() {
            Some(group) if joins_open_window => {
                group.push(index);
                open_end_ms = open_end_ms.max(end_ms);
            }
            _ => {
                groups.push(vec![index]);
                open_end_ms = end_ms;
            }
        }
    }

    let by_score = |left: &usize, right: &usize| {
        hits[*right]
            .score
            .total_cmp(&hits[*left].score)
            .then_with(|| left.cmp(right))
    };
    let mut ordered_groups: Vec<Vec<usize>> = groups
        .into_iter()
        .map(|mut group| {
            group.sort_by(by_score);
            group
        })
        .collect();
    ordered_groups.sort_by(|left, right| by_score(&left[0], &right[0]));

    let mut slots: Vec<Option<FusedHit>> = hits.into_iter().map(Some).collect();
    ordered_groups
        .into_iter()
        .map(|group| {
            let members: Vec<FusedHit> = group
                .into_iter()
                .filter_map(|index| slots[index].take())
                .collect();
            window_of(members)
        })
        .collect()
}

/// `members` is non-empty and best first.
fn window_of(members: Vec<FusedHit>) -> MomentWindow {
    let best = members[0].clone();
    let start_ms = members
        .iter()
        .map(|member| member.payload.start_ms)
        .min()
        .unwrap_or(best.payload.start_ms);
    let end_ms = members
        .iter()
        .map(|member| member.payload.end_ms.max(member.payload.start_ms))
        .max()
        .unwrap_or(best.payload.end_ms);
    let regions = members
        .iter()
        .filter_map(|member| {
            member.payload.region.map(|region| WindowRegion {
                id: member.id,
                start_ms: member.payload.start_ms,
                end_ms: member.payload.end_ms,
                region,
            })
        })
        .collect();
    MomentWindow {
        tenant: best.payload.tenant.clone(),
        stream_id: best.payload.stream_id.clone(),
        start_ms,
        end_ms,
        score: best.score,
        best,
        members,
        regions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RecordKind;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn id(number: u128) -> Uuid {
        Uuid::from_u128(number)
    }

    fn payload(tenant: &str, stream: &str, start_ms: u64, end_ms: u64) -> PointPayload {
        PointPayload {
            tenant: tenant.into(),
            stream_id: stream.into(),
            segment_seq: 0,
            kind: RecordKind::Caption,
            start_ms,
            end_ms,
            caption: String::new(),
            model_rev: "test".into(),
            source_uri: format!("/videos/{stream}.mp4"),
            region: None,
            thumbnail: None,
            indexed_at_ms: 0,
            labels: Vec::new(),
        }
    }

    /// A channel's hit; the raw score only has to fall with the rank.
    fn hit(number: u128, position: usize) -> Hit {
        Hit {
            id: id(number),
            score: 1.0 - position as f32 / 100.0,
            payload: payload(
                "acme",
                "cam",
                number as u64 * 10_000,
                number as u64 * 10_000 + 1,
            ),
        }
    }

    /// A ranked list of the given ids, best first.
    fn ranked(numbers: &[u128]) -> Vec<Hit> {
        numbers
            .iter()
            .enumerate()
            .map(|(position, number)| hit(*number, position))
            .collect()
    }

    fn ids(fused: &[FusedHit]) -> Vec<u128> {
        fused.iter().map(|hit| hit.id.as_u128()).collect()
    }

    fn close(left: f64, right: f64) -> bool {
        (left - right).abs() < 1e-12
    }

    #[test]
    fn channel_names_round_trip() {
        for channel in Channel::ALL {
            assert_eq!(Channel::parse(channel.as_str()), Some(channel));
            assert_eq!(
                serde_json::to_value(channel).ok(),
                Some(serde_json::Value::String(channel.as_str().into()))
            );
        }
        assert_eq!(Channel::parse("Caption"), None);
        assert_eq!(Channel::Visual.vector_name(), Some(vector_names::VISUAL));
        assert_eq!(Channel::Lexical.vector_name(), None);
    }

    #[test]
    fn a_hit_two_channels_agree_on_beats_a_single_first_place() {
        // caption: [1, 2], visual: [3, 2], k = 60:
        //   1: 1/61         = 0.016393
        //   2: 1/62 + 1/62  = 0.032258
        //   3: 1/61         = 0.016393
        // 2 first; 1 and 3 tie (both best rank 1), broken by id.
        let fused = fuse(
            BTreeMap::from([
                (Channel::Caption, ranked(&[1, 2])),
                (Channel::Visual, ranked(&[3, 2])),
            ]),
            &FusionSettings::default(),
            10,
        );
        assert_eq!(ids(&fused), vec![2, 1, 3]);
        assert!(close(fused[0].score, 1.0 / 62.0 + 1.0 / 62.0));
        assert!(close(fused[1].score, 1.0 / 61.0));
        assert_eq!(fused[1].score, fused[2].score);
        assert_eq!(
            fused[0].channels,
            BTreeMap::from([
                (
                    Channel::Caption,
                    ChannelScore {
                        rank: 2,
                        score: 0.99
                    }
                ),
                (
                    Channel::Visual,
                    ChannelScore {
                        rank: 2,
                        score: 0.99
                    }
                ),
            ])
        );
        assert_eq!(fused[1].channels.len(), 1);
        assert_eq!(fused[1].channels[&Channel::Caption].rank, 1);
        assert_eq!(fused[0].payload, hit(2, 0).payload);
    }

    #[test]
    fn agreement_far_down_still_beats_one_first_place() {
        // caption: [1, 100..=128, 2] puts 2 at rank 31, visual: [200..=229, 2] at rank 31 too
        // (the fillers are in one channel each, so none beats 1/62):
        //   2: 1/91 + 1/91 = 0.021978  >  1: 1/61 = 0.016393
        let mut caption: Vec<u128> = vec![1];
        caption.extend(100..=128);
        caption.push(2);
        let mut visual: Vec<u128> = (200..=229).collect();
        visual.push(2);
        assert_eq!((caption.len(), visual.len()), (31, 31));
        let fused = fuse(
            BTreeMap::from([
                (Channel::Caption, ranked(&caption)),
                (Channel::Visual, ranked(&visual)),
            ]),
            &FusionSettings::default(),
            2,
        );
        assert_eq!(ids(&fused), vec![2, 1]);
        assert!(close(fused[0].score, 2.0 / 91.0));
    }

    #[test]
    fn weights_change_the_order() {
        // caption: [1, 2], visual: [2, 1].
        // Equal weights: 1 = 1/61 + 1/62 = 2 (an exact tie; both have a first place) -> by id.
        let channels = || {
            BTreeMap::from([
                (Channel::Caption, ranked(&[1, 2])),
                (Channel::Visual, ranked(&[2, 1])),
            ])
        };
        let equal = fuse(channels(), &FusionSettings::default(), 10);
        assert_eq!(ids(&equal), vec![1, 2]);
        assert_eq!(equal[0].score, equal[1].score);

        // visual weight 2:
        //   1: 1/61 + 2/62 = 0.016393 + 0.032258 = 0.048651
        //   2: 2/61 + 1/62 = 0.032787 + 0.016129 = 0.048916  -> 2 first
        let mut settings = FusionSettings::default();
        settings.weights.set(Channel::Visual, 2.0);
        let weighted = fuse(channels(), &settings, 10);
        assert_eq!(ids(&weighted), vec![2, 1]);
        assert!(close(weighted[0].score, 2.0 / 61.0 + 1.0 / 62.0));
        assert!(close(weighted[1].score, 1.0 / 61.0 + 2.0 / 62.0));

        // A zero weight silences the channel: caption alone decides, its ranks still reported.
        settings.weights.set(Channel::Visual, 0.0);
        let silenced = fuse(channels(), &settings, 10);
        assert_eq!(ids(&silenced), vec![1, 2]);
        assert!(close(silenced[0].score, 1.0 / 61.0));
        assert_eq!(silenced[1].channels[&Channel::Visual].rank, 1);
    }

    #[test]
    fn the_rank_constant_changes_the_order() {
        // caption: [1, 2], visual: [3, 2]:
        //   k = 60: 2 = 1/62 + 1/62 = 0.032258 > 1 = 3 = 1/61 = 0.016393 -> [2, 1, 3]
        //   k = 0:  2 = 1/2 + 1/2 = 1 = 1 = 3 = 1/1, a three-way tie; 1 and 3 have a first
        //           place (then by id), 2 only second places                 -> [1, 3, 2]
        let channels = || {
            BTreeMap::from([
                (Channel::Caption, ranked(&[1, 2])),
                (Channel::Visual, ranked(&[3, 2])),
            ])
        };
        assert_eq!(
            ids(&fuse(channels(), &FusionSettings::default(), 10)),
            vec![2, 1, 3]
        );
        let sharp = FusionSettings {
            rank_constant: 0.0,
            ..FusionSettings::default()
        };
        assert_eq!(ids(&fuse(channels(), &sharp, 10)), vec![1, 3, 2]);
    }

    #[test]
    fn ties_break_on_best_rank_then_id() {
        // k = 0 keeps the arithmetic exact: caption [9], visual [5, 1], region [7, 1]:
        //   9: 1/1 = 1, 5: 1/1 = 1, 7: 1/1 = 1, 1: 1/2 + 1/2 = 1 -> a four-way tie.
        // Best rank 1 for 9, 5, 7 (by id: 5, 7, 9), then 1 with best rank 2.
        let settings = FusionSettings {
            rank_constant: 0.0,
            ..FusionSettings::default()
        };
        let fused = fuse(
            BTreeMap::from([
                (Channel::Caption, ranked(&[9])),
                (Channel::Visual, ranked(&[5, 1])),
                (Channel::Region, ranked(&[7, 1])),
            ]),
            &settings,
            10,
        );
        assert_eq!(ids(&fused), vec![5, 7, 9, 1]);
        assert!(fused.iter().all(|hit| hit.score == 1.0));
        assert_eq!(fused[3].best_rank(), 2);
    }

    #[test]
    fn the_same_ranks_in_swapped_channels_tie_exactly() {
        // 30: caption 1, visual 2, region 3; 10: caption 3, visual 1, region 2;
        // 20: caption 2, visual 3, region 1. Each scores 1/61 + 1/62 + 1/63 = 0.048272 to the
        // last bit, and each has a first place, so the order is by id.
        let fused = fuse(
            BTreeMap::from([
                (Channel::Caption, ranked(&[30, 20, 10])),
                (Channel::Visual, ranked(&[10, 30, 20])),
                (Channel::Region, ranked(&[20, 10, 30])),
            ]),
            &FusionSettings::default(),
            10,
        );
        assert_eq!(ids(&fused), vec![10, 20, 30]);
        assert_eq!(fused[0].score, fused[1].score);
        assert_eq!(fused[1].score, fused[2].score);
        assert!(close(fused[0].score, 1.0 / 61.0 + 1.0 / 62.0 + 1.0 / 63.0));
    }

    #[test]
    fn empty_channels_and_top_k() {
        // caption returned nothing; visual: [1, 2, 3] -> 1/61 > 1/62 > 1/63.
        let channels = || {
            BTreeMap::from([
                (Channel::Caption, Vec::new()),
                (Channel::Visual, ranked(&[1, 2, 3])),
            ])
        };
        let fused = fuse(channels(), &FusionSettings::default(), 10);
        assert_eq!(ids(&fused), vec![1, 2, 3]);
        assert!(close(fused[2].score, 1.0 / 63.0));
        assert!(fused.iter().all(|hit| hit.channels.len() == 1));
        assert_eq!(
            ids(&fuse(channels(), &FusionSettings::default(), 2)),
            vec![1, 2]
        );
        assert!(fuse(channels(), &FusionSettings::default(), 0).is_empty());
        assert!(fuse(BTreeMap::new(), &FusionSettings::default(), 10).is_empty());
        assert!(
            fuse(
                BTreeMap::from([(Channel::Lexical, Vec::new())]),
                &FusionSettings::default(),
                10
            )
            .is_empty()
        );
    }

    #[test]
    fn a_duplicate_within_a_channel_counts_once_at_its_best_position() {
        // lexical: [1, 1, 2] -> 1 = 1/61 (not 1/61 + 1/62), 2 keeps its position, rank 3: 1/63.
        let fused = fuse(
            BTreeMap::from([(Channel::Lexical, ranked(&[1, 1, 2]))]),
            &FusionSettings::default(),
            10,
        );
        assert_eq!(ids(&fused), vec![1, 2]);
        assert!(close(fused[0].score, 1.0 / 61.0));
        assert_eq!(fused[1].channels[&Channel::Lexical].rank, 3);
        assert!(close(fused[1].score, 1.0 / 63.0));
    }

    #[test]
    fn settings_validation_names_the_field() {
        assert!(FusionSettings::default().validate().is_ok());
        let negative_k = FusionSettings {
            rank_constant: -1.0,
            ..FusionSettings::default()
        };
        assert_eq!(
            negative_k.validate().map_err(|error| error.field),
            Err("rank_constant".to_string())
        );
        let mut nan_weight = FusionSettings::default();
        nan_weight.weights.set(Channel::Region, f64::NAN);
        assert_eq!(
            nan_weight.validate().map_err(|error| error.field),
            Err("weights.region".to_string())
        );
        let parsed: FusionSettings =
            serde_json::from_str(r#"{"weights": {"visual": 0.5}}"#).unwrap_or_default();
        assert_eq!(parsed.rank_constant, 60.0);
        assert_eq!(parsed.weights.visual, 0.5);
        assert_eq!(parsed.weights.caption, 1.0);
        assert!(serde_json::from_str::<FusionSettings>(r#"{"weights": {"audio": 1}}"#).is_err());
    }

    fn fused_hit(
        number: u128,
        score: f64,
        (tenant, stream): (&str, &str),
        start_ms: u64,
        end_ms: u64,
    ) -> FusedHit {
        FusedHit {
            id: id(number),
            score,
            payload: payload(tenant, stream, start_ms, end_ms),
            channels: BTreeMap::from([(
                Channel::Caption,
                ChannelScore {
                    rank: 1,
                    score: 0.5,
                },
            )]),
        }
    }

    fn member_ids(window: &MomentWindow) -> Vec<u128> {
        window
            .members
            .iter()
            .map(|member| member.id.as_u128())
            .collect()
    }

    const CAM: (&str, &str) = ("acme", "cam");

    #[test]
    fn hits_within_the_gap_merge_and_over_it_do_not() {
        // [0, 2000) and [2500, 4000): a gap of 500 ms.
        let hits = || {
            vec![
                fused_hit(1, 0.03, CAM, 0, 2_000),
                fused_hit(2, 0.02, CAM, 2_500, 4_000),
            ]
        };
        let merged = merge_windows(hits(), 500);
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].start_ms, merged[0].end_ms), (0, 4_000));
        assert_eq!(member_ids(&merged[0]), vec![1, 2]);

        let apart = merge_windows(hits(), 499);
        assert_eq!(apart.len(), 2);
        assert_eq!(member_ids(&apart[0]), vec![1]);
        assert_eq!((apart[1].start_ms, apart[1].end_ms), (2_500, 4_000));
    }

    #[test]
    fn overlapping_and_touching_ranges_merge_without_a_gap() {
        // 2 lies inside 1; 3 starts where 1 ends (a gap of 0).
        let merged = merge_windows(
            vec![
                fused_hit(1, 0.01, CAM, 1_000, 3_000),
                fused_hit(2, 0.03, CAM, 1_500, 2_000),
                fused_hit(3, 0.02, CAM, 3_000, 3_500),
            ],
            0,
        );
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].start_ms, merged[0].end_ms), (1_000, 3_500));
        // Members best first: 0.03, 0.02, 0.01.
        assert_eq!(member_ids(&merged[0]), vec![2, 3, 1]);
    }

    #[test]
    fn a_chain_of_neighbours_is_one_window_scored_by_its_best_member() {
        // A [0, 1000), B [1500, 2500), C [3000, 4000), gap 500: A-B 500, B-C 500, A-C 2000.
        let merged = merge_windows(
            vec![
                fused_hit(3, 0.05, CAM, 3_000, 4_000),
                fused_hit(1, 0.03, CAM, 0, 1_000),
                fused_hit(2, 0.01, CAM, 1_500, 2_500),
            ],
            500,
        );
        assert_eq!(merged.len(), 1);
        let window = &merged[0];
        assert_eq!((window.start_ms, window.end_ms), (0, 4_000));
        assert_eq!(window.score, 0.05);
        assert_eq!(window.best.id, id(3));
        assert_eq!(member_ids(window), vec![3, 1, 2]);
        assert_eq!((window.tenant.as_str(), window.stream_id.as_str()), CAM);
    }

    #[test]
    fn a_long_member_bridges_to_a_later_one() {
        // 1 [0, 10000) covers 2 [1000, 2000); 3 [10500, 11000) is 500 ms after 1's end, not
        // after 2's: the window's latest end, not the previous member's, counts.
        let merged = merge_windows(
            vec![
                fused_hit(1, 0.03, CAM, 0, 10_000),
                fused_hit(2, 0.02, CAM, 1_000, 2_000),
                fused_hit(3, 0.01, CAM, 10_500, 11_000),
            ],
            500,
        );
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].end_ms, 11_000);
    }

    #[test]
    fn different_streams_and_tenants_never_merge() {
        let merged = merge_windows(
            vec![
                fused_hit(1, 0.03, ("acme", "cam-1"), 0, 2_000),
                fused_hit(2, 0.02, ("acme", "cam-2"), 0, 2_000),
                fused_hit(3, 0.01, ("other", "cam-1"), 0, 2_000),
            ],
            10_000,
        );
        assert_eq!(merged.len(), 3);
        let streams: Vec<(&str, &str)> = merged
            .iter()
            .map(|window| (window.tenant.as_str(), window.stream_id.as_str()))
            .collect();
        assert_eq!(
            streams,
            vec![("acme", "cam-1"), ("acme", "cam-2"), ("other", "cam-1")]
        );
    }

    #[test]
    fn subtitle_caption_and_region_of_one_moment_merge_and_keep_the_box() {
        let mut subtitle = fused_hit(1, 0.02, CAM, 1_000, 3_000);
        subtitle.payload.kind = RecordKind::Subtitle;
        let caption = fused_hit(2, 0.03, CAM, 0, 2_000);
        let mut region = fused_hit(3, 0.01, CAM, 1_500, 2_500);
        region.payload.kind = RecordKind::Region;
        let bounding_box = NormalizedBox {
            x0: 0.1,
            y0: 0.2,
            x1: 0.5,
            y1: 0.6,
        };
        region.payload.region = Some(bounding_box);
        let merged = merge_windows(vec![caption, subtitle, region], 0);
        assert_eq!(merged.len(), 1);
        assert_eq!(member_ids(&merged[0]), vec![2, 1, 3]);
        assert_eq!(
            merged[0].regions,
            vec![WindowRegion {
                id: id(3),
                start_ms: 1_500,
                end_ms: 2_500,
                region: bounding_box,
            }]
        );
    }

    #[test]
    fn windows_are_ordered_by_their_best_member() {
        // Window [0, 3000) of three hits, best 0.02; a lone hit at 60 s with 0.03 leads.
        // Equal best scores keep the input order: 4 (0.01) is before 5 (0.01).
        let merged = merge_windows(
            vec![
                fused_hit(6, 0.03, CAM, 60_000, 61_000),
                fused_hit(1, 0.02, CAM, 0, 1_000),
                fused_hit(2, 0.015, CAM, 1_000, 2_000),
                fused_hit(3, 0.012, CAM, 2_000, 3_000),
                fused_hit(5, 0.01, CAM, 90_000, 91_000),
                fused_hit(4, 0.01, CAM, 120_000, 121_000),
            ],
            0,
        );
        let bests: Vec<(u128, f64)> = merged
            .iter()
            .map(|window| (window.best.id.as_u128(), window.score))
            .collect();
        assert_eq!(bests, vec![(6, 0.03), (1, 0.02), (5, 0.01), (4, 0.01)]);
        assert_eq!(member_ids(&merged[1]), vec![1, 2, 3]);
        assert!(merge_windows(Vec::new(), 1_000).is_empty());
    }

    /// Up to four channels, each a ranked list of distinct ids drawn from 0..24.
    fn channel_lists() -> impl Strategy<Value = BTreeMap<Channel, Vec<u128>>> {
        let list =
            proptest::sample::subsequence((0u128..24).collect::<Vec<_>>(), 0..=24).prop_shuffle();
        proptest::collection::btree_map(
            proptest::sample::select(Channel::ALL.to_vec()),
            list,
            0..=4,
        )
    }

    fn weights() -> impl Strategy<Value = FusionSettings> {
        (0.0f64..120.0, proptest::collection::vec(0.0f64..3.0, 4)).prop_map(
            |(rank_constant, values)| {
                let mut settings = FusionSettings {
                    rank_constant,
                    ..FusionSettings::default()
                };
                for (channel, weight) in Channel::ALL.into_iter().zip(values) {
                    settings.weights.set(channel, weight);
                }
                settings
            },
        )
    }

    proptest! {
        /// The fused list is the union of the channels' ids, each once, with non-increasing
        /// scores that are the RRF sum of the ranks it reports; a smaller `top_k` is a prefix.
        #[test]
        fn fusion_is_a_sorted_permutation_of_the_union(
            lists in channel_lists(),
            settings in weights(),
            top_k in 0usize..30,
        ) {
            let channels: BTreeMap<Channel, Vec<Hit>> = lists
                .iter()
                .map(|(channel, numbers)| (*channel, ranked(numbers)))
                .collect();
            let union: BTreeSet<u128> = lists.values().flatten().copied().collect();
            let fused = fuse(channels.clone(), &settings, usize::MAX);
            let fused_ids = ids(&fused);
            prop_assert_eq!(fused_ids.len(), union.len());
            prop_assert_eq!(fused_ids.iter().copied().collect::<BTreeSet<_>>(), union);
            for pair in fused.windows(2) {
                prop_assert!(pair[0].score >= pair[1].score);
            }
            for hit in &fused {
                let mut expected = 0.0;
                for (channel, numbers) in &lists {
                    let position = numbers.iter().position(|number| *number == hit.id.as_u128());
                    prop_assert_eq!(
                        hit.channels.get(channel).map(|score| score.rank as usize),
                        position.map(|position| position + 1)
                    );
                    if let Some(position) = position {
                        expected += settings.weights.get(*channel)
                            / (settings.rank_constant + position as f64 + 1.0);
                    }
                }
                prop_assert!((hit.score - expected).abs() < 1e-9);
            }
            let truncated = fuse(channels, &settings, top_k);
            prop_assert_eq!(&truncated[..], &fused[..top_k.min(fused.len())]);
        }

        /// Every hit lands in exactly one window; windows of one stream stay more than
        /// `max_gap_ms` apart; a window scores as its best member; windows come best first.
        #[test]
        fn windows_partition_the_hits(
            spans in proptest::collection::vec((0usize..2, 0u64..20_000, 0u64..3_000, 0.0f64..1.0), 0..40),
            max_gap_ms in 0u64..2_000,
        ) {
            let streams = [("acme", "cam-1"), ("acme", "cam-2")];
            let hits: Vec<FusedHit> = spans
                .iter()
                .enumerate()
                .map(|(number, (stream, start_ms, length_ms, score))| {
                    fused_hit(number as u128, *score, streams[*stream], *start_ms, start_ms + length_ms)
                })
                .collect();
            let windows = merge_windows(hits.clone(), max_gap_ms);
            let mut seen: Vec<u128> = windows.iter().flat_map(member_ids).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..hits.len() as u128).collect::<Vec<_>>());
            for pair in windows.windows(2) {
                prop_assert!(pair[0].score >= pair[1].score);
            }
            for window in &windows {
                prop_assert_eq!(&window.members[0], &window.best);
                prop_assert!(window.members.iter().all(|member| member.score <= window.score
                    && member.payload.stream_id == window.stream_id
                    && member.payload.start_ms >= window.start_ms
                    && member.payload.end_ms <= window.end_ms));
                for other in &windows {
                    if std::ptr::eq(window, other) || other.stream_id != window.stream_id {
                        continue;
                    }
                    // Disjoint and farther apart than the gap.
                    prop_assert!(
                        other.start_ms > window.end_ms + max_gap_ms
                            || window.start_ms > other.end_ms + max_gap_ms
                    );
                }
            }
        }
    }
}
