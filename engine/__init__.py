"""follow-engine: batch following of XT.com copy-trading leaders, at the exchange's limit."""
