"""The appendix's analyses: attention maps (A.2), GQA grounding (A.3), inspection."""
