"""The social pipeline: posts of several networks, normalised to one standard post
(SocialPost), mined and scored with VADER; negative posts of reach become alerts for customer
care, and each brand's posts are summed up per channel and minute."""
