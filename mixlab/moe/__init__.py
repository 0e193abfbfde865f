"""Mixture machinery: MCL assignment rules, inference routings, MoE gating losses."""
