"""`rank-heads`, `ablate`, `amplify`: every attention head scored by its role in arbitration, and the
top heads blocked or amplified against random head sets."""
