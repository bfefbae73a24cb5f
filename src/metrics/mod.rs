//! Caption metrics, computed the way the reference scorers compute them (see docs in each file).
