"""`analyze`: information flow (attention knockout, logit lens by component, anchor agreement,
optional saliency) and the study's findings checked on it."""
