//! The English non-breaking prefixes METEOR 1.5's `-norm` normaliser uses, as data.
//!
//! Source: `nonbreaking/english.prefixes` inside `meteor-1.5.jar` (taken there from the Moses
//! tokenizer), distributed with METEOR 1.5 under the GNU Lesser General Public License 2.1.
//! A word ending in `.` whose prefix is listed keeps its dot.

/// Prefixes that never end a sentence.
pub const NONBREAKING_ANY: [&str; 90] = [
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S",
    "T", "U", "V", "W", "X", "Y", "Z", "Adj", "Adm", "Adv", "Asst", "Bart", "Bldg", "Brig", "Bros",
    "Capt", "Cmdr", "Col", "Comdr", "Con", "Corp", "Cpl", "DR", "Dr", "Drs", "Ens", "Gen", "Gov",
    "Hon", "Hr", "Hosp", "Insp", "Lt", "MM", "MR", "MRS", "MS", "Maj", "Messrs", "Mlle", "Mme",
    "Mr", "Mrs", "Ms", "Msgr", "Op", "Ord", "Pfc", "Ph", "Prof", "Pvt", "Rep", "Reps", "Res",
    "Rev", "Rt", "Sen", "Sens", "Sfc", "Sgt", "Sr", "St", "Supt", "Surg", "v", "vs", "i.e", "rev",
    "e.g", "Nos", "Nr",
];

/// Prefixes that keep their dot only when a number follows (`No. 5`).
pub const NONBREAKING_NUMERIC_ONLY: [&str; 3] = ["No", "Art", "pp"];
