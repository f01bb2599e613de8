"""Lightning callbacks of quark-lightning (installed as the top-level `callbacks` package).

- `samples.SampleCompletionsLogger`: sample completions with their scores and findings, as TensorBoard text.
- `reward_trend.RewardTrend`: reward at the start vs the end of training, printed and written to JSON.
"""
