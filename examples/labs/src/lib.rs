//! The labs.v1.LabResults example of docs/ADOPTING.md: generated code and the synthetic result
//! the server returns. Every sensitive value is a recognisable canary, never real PHI.

pub mod phi {
    pub mod v1 {
        tonic::include_proto!("phi.v1");
    }
}

pub mod labs {
    pub mod v1 {
        tonic::include_proto!("labs.v1");
    }
}

use labs::v1::LabResult;

/// The one result the example server holds.
pub const RESULT_ID: &str = "r-1001";

/// The synthetic result `RESULT_ID`.
pub fn result() -> LabResult {
    LabResult {
        result_id: RESULT_ID.into(),
        patient_name: "Canary Labpatient".into(),
        mrn: "MRN-LAB-77120".into(),
        date_of_birth: "1961-02-03".into(),
        ssn: "900-11-4321".into(),
        test_code: "2345-7".into(),
        value: "5.4".into(),
        unit: "mmol/L".into(),
        comments: "Fasting sample; patient SSN 900-11-4321 given at intake, call 555-010-7788"
            .into(),
    }
}
