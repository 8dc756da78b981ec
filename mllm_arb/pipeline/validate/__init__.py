"""`validate`: every analysis scored against the mechanism a model ships in ground_truth.json."""
