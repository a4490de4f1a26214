"""Safety judges: refusal phrases and refusal log-odds (offline), the model judges of the paper
(Beaver-7B cost, LlamaGuard), and evaluating a model's refusal and perplexity."""
