//! The demo's synthetic data: one patient and their encounters. Every sensitive value is a
//! recognisable canary (never real PHI), so tests can scan logs, stats, audit events and
//! responses for leaks. The demo backend serves exactly these messages.

use crate::health::v1::{patient, Address, Contact, Diagnosis, Encounter, HumanName, Patient};

/// Synthetic sensitive values. None may ever appear in a log line, a metric, an audit event
/// or an error message; where a role must not see them, not in a response either.
pub mod canary {
    pub const SSN: &str = "900-55-1234";
    pub const MRN: &str = "MRN-7Q4K-CANARY";
    pub const FAMILY: &str = "Canarysmith";
    pub const GIVEN: &str = "Zebediah";
    pub const BIRTH_DATE: &str = "1931-02-29";
    pub const PHONE: &str = "555-013-4477";
    pub const EMAIL: &str = "zebediah.canarysmith@example.test";
    pub const STREET: &str = "77 Canary Wharf Lane";
    pub const CITY: &str = "Yellowbird";
    pub const POSTAL: &str = "99501-7788";
    pub const INSURANCE: &str = "INS-CANARY-55667788";
    pub const EXTERNAL_ID: &str = "EXT-CANARY-3141";
    pub const EMERGENCY_PHONE: &str = "555-019-8822";
    pub const DIAGNOSIS: &str = "canary-pox, chronic";
    /// Free text that embeds identifiers, as clinicians' notes do.
    pub fn note() -> String {
        format!("Pt {GIVEN} {FAMILY} called from {PHONE} re SSN {SSN}; MRN {MRN}.")
    }

    /// Every canary, for leak scans.
    pub const ALL: &[&str] = &[
        SSN,
        MRN,
        FAMILY,
        GIVEN,
        BIRTH_DATE,
        PHONE,
        EMAIL,
        STREET,
        CITY,
        POSTAL,
        INSURANCE,
        EXTERNAL_ID,
        EMERGENCY_PHONE,
        DIAGNOSIS,
    ];
}

/// The only patient id the demo knows.
pub const PATIENT_ID: &str = "p-0001";
/// Upper bound on streamed encounters per call, so a client cannot make the backend spin.
pub const MAX_ENCOUNTERS: u32 = 10_000;
/// Upper bound on the padded note size.
pub const MAX_NOTE_BYTES: u32 = 1 << 20;

pub fn patient() -> Patient {
    use canary::*;
    Patient {
        patient_id: PATIENT_ID.into(),
        mrn: MRN.into(),
        name: Some(HumanName {
            family: FAMILY.into(),
            given: vec![GIVEN.into(), "Q".into()],
            prefix: "Mx".into(),
        }),
        ssn: SSN.into(),
        birth_date: BIRTH_DATE.into(),
        contacts: vec![Contact {
            phone: PHONE.into(),
            email: EMAIL.into(),
            r#use: "home".into(),
        }],
        address: Some(Address {
            line: vec![STREET.into(), "Apt 3".into()],
            city: CITY.into(),
            state: "AK".into(),
            postal_code: POSTAL.into(),
        }),
        identifiers: [("lab-system".to_string(), EXTERNAL_ID.to_string())].into(),
        emergency_contact: Some(patient::EmergencyContact::EmergencyPhone(
            EMERGENCY_PHONE.into(),
        )),
        allergy_codes: vec![91936005, 300916003, 418689008],
        notes: note(),
        insurance_member_id: INSURANCE.into(),
        tenant: "north".into(),
    }
}

pub fn encounter(index: u32, note_bytes: u32) -> Encounter {
    let mut note = canary::note();
    let target = note_bytes.min(MAX_NOTE_BYTES) as usize;
    while note.len() < target {
        note.push_str(" Vitals stable, plan unchanged.");
    }
    Encounter {
        encounter_id: format!("e-{index:05}"),
        patient_id: PATIENT_ID.into(),
        mrn: canary::MRN.into(),
        start_time: format!("2026-01-{:02}T09:30:00Z", index % 28 + 1),
        attending: Some(HumanName {
            family: "Attending".into(),
            given: vec!["Dana".into()],
            prefix: "Dr".into(),
        }),
        diagnoses: vec![Diagnosis {
            code: "Z00.00".into(),
            description: canary::DIAGNOSIS.into(),
        }],
        vitals: vec![36.8, 72.0, 118.0, 76.0],
        note,
    }
}
