"""The fraud pipeline: every order scored from its customer's, card's and device's recent
orders by a model published while workers run, and decided (approve, review, reject) once;
orders sent to review wait in a queue for a person."""
